"""Attention backend selection and every installed kernel against a plain matmul-softmax attention."""
import pytest
import torch

from models.attention import BACKEND_ENV_VAR, BACKENDS, attention, installed_backends, resolve_backend


def plain_attention(q, k, v):
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / q.shape[-1] ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.float())


def test_sdpa_always_installed_and_auto_is_sdpa_without_cuda(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    assert installed_backends()[-1] == "sdpa"
    if not torch.cuda.is_available():
        assert resolve_backend("auto") == "sdpa"
    assert resolve_backend("sdpa") == "sdpa"


def test_environment_variable_overrides_config(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, "sdpa")
    assert resolve_backend("fa3") == "sdpa"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "sdpa"])
def test_forcing_a_missing_kernel_is_a_one_line_error(backend, monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    if backend in installed_backends():
        pytest.skip(f"{backend} is installed here")
    with pytest.raises(ValueError, match=f"{backend}.*not installed"):
        resolve_backend(backend)


def test_unknown_backend_name_is_an_error(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend("xformers")


def test_cpu_falls_back_to_sdpa_whatever_the_backend():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 6, 2, 8) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "fa3"), plain_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_installed_kernels_match_plain_attention_on_cuda(backend):
    if backend not in installed_backends():
        pytest.skip(f"{backend} not installed")
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 81, 8, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = attention(q, k, v, backend)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), plain_attention(q, k, v), rtol=2e-2, atol=2e-2)
