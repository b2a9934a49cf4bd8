import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models import sparse_embedding
from models.sparse_embedding import CastedSparseEmbedding, SparseEmbeddingSignSGD


def make_embedding(table: torch.Tensor, batch_size: int, cast_to=torch.float32) -> CastedSparseEmbedding:
    embedding = CastedSparseEmbedding(table.shape[0], table.shape[1], batch_size, init_std=0.0, cast_to=cast_to)
    embedding.weights.copy_(table)
    return embedding


def train_one_step(embedding, optimizer, ids, grad_of_output):
    """Forward in training mode, backward of sum(output * grad_of_output), one optimizer step."""
    embedding.train()
    (embedding(ids).float() * grad_of_output).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_zero_init_buffers_and_state_dict_keys():
    embedding = CastedSparseEmbedding(10, 6, batch_size=4, init_std=0.0, cast_to=torch.bfloat16)
    assert torch.equal(embedding.weights, torch.zeros(10, 6))
    assert embedding.weights.dtype == torch.float32 and not embedding.weights.requires_grad
    assert embedding.local_weights.shape == (4, 6) and embedding.local_weights.requires_grad
    assert embedding.local_ids.shape == (4,) and embedding.local_ids.dtype == torch.int32
    assert list(embedding.state_dict().keys()) == ["weights"]
    assert list(embedding.parameters()) == []


def test_eval_returns_cast_rows_without_grad_for_any_batch_size():
    embedding = make_embedding(torch.arange(12.0).reshape(4, 3), batch_size=2, cast_to=torch.bfloat16).eval()
    out = embedding(torch.tensor([3, 0, 3], dtype=torch.int32))
    assert out.dtype == torch.bfloat16 and not out.requires_grad
    assert out.float().tolist() == [[9, 10, 11], [0, 1, 2], [9, 10, 11]]


def test_train_forward_copies_rows_and_gradient_lands_in_local_weights():
    embedding = make_embedding(torch.arange(12.0).reshape(4, 3), batch_size=2, cast_to=torch.bfloat16).train()
    ids = torch.tensor([2, 1], dtype=torch.int32)
    out = embedding(ids)
    assert out.dtype == torch.bfloat16
    assert out.float().tolist() == [[6, 7, 8], [3, 4, 5]]
    assert embedding.local_ids.tolist() == [2, 1]
    (out.float() * torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])).sum().backward()
    assert embedding.local_weights.grad.tolist() == [[1, 2, 3], [-1, 0.5, 0]]
    assert embedding.weights.grad is None


def test_training_batch_of_the_wrong_size_is_rejected():
    embedding = CastedSparseEmbedding(4, 3, batch_size=2, init_std=0.0, cast_to=torch.float32).train()
    with pytest.raises(ValueError, match="batch_size=2"):
        embedding(torch.tensor([0, 1, 2], dtype=torch.int32))


def test_sign_sgd_sums_repeated_ids_before_sign_and_leaves_other_rows_alone():
    table = torch.tensor([[1.0, 1.0, 1.0], [2.0, -2.0, 4.0], [1.0, 1.0, 1.0], [-3.0, 3.0, 0.5]])
    embedding = make_embedding(table, batch_size=3)
    optimizer = SparseEmbeddingSignSGD(embedding.buffers(), lr=0.1, weight_decay=0.5)
    # Row 1 is looked up twice: per dimension the gradient sums are -0.2, +0.1 and exactly 0.
    grad_of_output = torch.tensor([[0.3, 0.3, 0.25], [-0.5, -0.2, -0.25], [1.0, -1.0, 0.0]])
    train_one_step(embedding, optimizer, torch.tensor([1, 1, 3], dtype=torch.int32), grad_of_output)

    # w * (1 - 0.1 * 0.5) - 0.1 * sign(sum)
    assert torch.allclose(embedding.weights[1], torch.tensor([2 * 0.95 + 0.1, -2 * 0.95 - 0.1, 4 * 0.95]))
    assert torch.allclose(embedding.weights[3], torch.tensor([-3 * 0.95 - 0.1, 3 * 0.95 + 0.1, 0.5 * 0.95]))
    # Untouched rows get no weight decay either.
    assert torch.equal(embedding.weights[0], table[0]) and torch.equal(embedding.weights[2], table[2])


def test_lr_is_read_from_the_param_group_each_step_and_zero_grad_clears():
    embedding = make_embedding(torch.zeros(3, 2), batch_size=1)
    optimizer = SparseEmbeddingSignSGD(embedding, lr=0.1, weight_decay=0.0)
    ids = torch.tensor([2], dtype=torch.int32)
    optimizer.param_groups[0]["lr"] = 0.25
    train_one_step(embedding, optimizer, ids, torch.tensor([[1.0, -1.0]]))
    assert embedding.weights[2].tolist() == [-0.25, 0.25]
    assert embedding.local_weights.grad is None

    optimizer.step()  # no gradient this step: nothing moves
    assert embedding.weights[2].tolist() == [-0.25, 0.25]


def test_optimizer_rejects_anything_but_one_embeddings_buffers():
    embedding = CastedSparseEmbedding(3, 2, batch_size=1, init_std=0.0, cast_to=torch.float32)
    with pytest.raises(ValueError):
        SparseEmbeddingSignSGD([embedding.weights, embedding.local_ids], lr=0.1)


def test_local_weights_stay_a_leaf_after_casting_the_module():
    embedding = make_embedding(torch.ones(3, 2), batch_size=2).double().train()
    assert embedding.local_weights.is_leaf and embedding.local_weights.dtype == torch.float64
    embedding(torch.tensor([0, 2], dtype=torch.int32)).sum().backward()
    assert embedding.local_weights.grad.tolist() == [[1, 1], [1, 1]]


# Two ranks look up overlapping ids; after one step both tables must equal one process on the joint batch.
NUM_ROWS, DIM, LOCAL_BATCH = 8, 4, 4
IDS_PER_RANK = [[0, 3, 3, 5], [5, 1, 3, 6]]


def problem():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(NUM_ROWS, DIM, generator=generator)
    grads = torch.randn(2 * LOCAL_BATCH, DIM, generator=generator)
    # Row 5 on each rank: alone, rank 0 would push it up; summed over ranks it goes down.
    grads[3], grads[4] = torch.full((DIM,), 0.3), torch.full((DIM,), -0.5)
    return table, grads


def train_in_micro_batches(embedding, optimizer, ids, grad_of_output, parts):
    """train_one_step over `parts` equal micro-batches of the rows, kept between them as training keeps them."""
    embedding.train()
    for index, (part_ids, part_grads) in enumerate(zip(ids.chunk(parts), grad_of_output.chunk(parts))):
        (embedding(part_ids).float() * part_grads).sum().backward()
        if index < parts - 1:
            optimizer.keep_micro_batch()
    optimizer.step()
    optimizer.zero_grad()


def test_micro_batches_kept_between_backwards_update_as_their_joint_batch():
    table, grads = problem()
    ids = torch.tensor(IDS_PER_RANK[0] + IDS_PER_RANK[1], dtype=torch.int32)
    whole = make_embedding(table, 2 * LOCAL_BATCH)
    train_one_step(whole, SparseEmbeddingSignSGD(whole, lr=0.1, weight_decay=0.2), ids, grads)
    for parts in (2, 4):
        split = make_embedding(table, 2 * LOCAL_BATCH // parts)
        optimizer = SparseEmbeddingSignSGD(split, lr=0.1, weight_decay=0.2)
        train_in_micro_batches(split, optimizer, ids, grads, parts)
        # Row 5 is in both halves with opposite signs: only the joint sum moves it down.
        assert torch.equal(split.weights, whole.weights) and optimizer.kept_micro_batches == []
    assert not torch.equal(whole.weights[5], table[5] * 0.98 - 0.1)


def _distributed_worker(rank, backend, init_file, out_dir):
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    try:
        table, grads = problem()
        ids = torch.tensor(IDS_PER_RANK[rank], dtype=torch.int32, device=device)
        local_grads = grads[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH].to(device)
        for gather in ("single_tensor", "list"):
            if gather == "list":  # as on a backend without the single-tensor all-gather
                def unsupported(output, input):
                    raise RuntimeError("no _allgather_base")
                sparse_embedding._all_gather_into_tensor = unsupported
            embedding = make_embedding(table, LOCAL_BATCH).to(device)
            optimizer = SparseEmbeddingSignSGD(embedding.buffers(), lr=0.1, weight_decay=0.2, world_size=2)
            train_one_step(embedding, optimizer, ids, local_grads)
            torch.save(embedding.weights.cpu(), os.path.join(out_dir, f"{gather}_rank{rank}.pt"))
        # Each rank's rows as two micro-batches (gradient accumulation under several processes).
        embedding = make_embedding(table, LOCAL_BATCH // 2).to(device)
        optimizer = SparseEmbeddingSignSGD(embedding.buffers(), lr=0.1, weight_decay=0.2, world_size=2)
        train_in_micro_batches(embedding, optimizer, ids, local_grads, parts=2)
        torch.save(embedding.weights.cpu(), os.path.join(out_dir, f"micro_batches_rank{rank}.pt"))
    finally:
        # Both ranks finish their collectives before either tears the group down: a rank leaving while the
        # other's gloo pair is still open can abort in gloo's destructors at exit.
        dist.barrier()
        dist.destroy_process_group()


def check_two_ranks_match_one_process(backend, tmp_path, atol):
    mp.spawn(_distributed_worker, args=(backend, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)

    table, grads = problem()
    embedding = make_embedding(table, 2 * LOCAL_BATCH)
    optimizer = SparseEmbeddingSignSGD(embedding.buffers(), lr=0.1, weight_decay=0.2, world_size=1)
    train_one_step(embedding, optimizer, torch.tensor(IDS_PER_RANK[0] + IDS_PER_RANK[1], dtype=torch.int32), grads)
    assert embedding.weights[5].tolist() == pytest.approx((table[5] * 0.98 + 0.1).tolist())

    for gather in ("single_tensor", "list", "micro_batches"):
        for rank in range(2):
            result = torch.load(tmp_path / f"{gather}_rank{rank}.pt")
            assert torch.allclose(result, embedding.weights, rtol=0, atol=atol)


@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_joint_batch(tmp_path):
    check_two_ranks_match_one_process("gloo", tmp_path, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_with_nccl_match_one_process(tmp_path):
    check_two_ranks_match_one_process("nccl", tmp_path, atol=1e-6)
