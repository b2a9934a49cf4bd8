"""ARC builder: token layout, augmentation, split rule, identifiers, file contents and input errors."""
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ARC_DATA_DIR, REPO_ROOT
from dataset import build_arc_dataset as arc
from dataset.common import dihedral_transform, inverse_dihedral_transform, load_metadata

BUILDER = os.path.join(REPO_ROOT, "dataset", "build_arc_dataset.py")
TRAINING_IDS = ["007bbfb7", "00d62c1b", "017c7c7b"]
EVALUATION_IDS = ["00576224", "12997ef3"]  # the second has two test pairs
NUM_AUG = 4


def shared_puzzles(subset, ids):
    """Real puzzles with their test outputs merged in (the per-puzzle-file layout)."""
    with open(os.path.join(ARC_DATA_DIR, f"arc-agi_{subset}_challenges.json")) as f:
        challenges = json.load(f)
    with open(os.path.join(ARC_DATA_DIR, f"arc-agi_{subset}_solutions.json")) as f:
        solutions = json.load(f)
    return {i: {"train": challenges[i]["train"],
                "test": [{"input": t["input"], "output": o} for t, o in zip(challenges[i]["test"], solutions[i])]}
            for i in ids}


def write_puzzle_folder(root, puzzles_by_subfolder):
    for subfolder, puzzles in puzzles_by_subfolder.items():
        os.makedirs(os.path.join(root, subfolder), exist_ok=True)
        for name, puzzle in puzzles.items():
            with open(os.path.join(root, subfolder, f"{name}.json"), "w") as f:
                json.dump(puzzle, f)


def write_challenge_pair(prefix, subset, puzzles, with_solutions=True):
    with open(f"{prefix}_{subset}_challenges.json", "w") as f:
        json.dump({name: {"train": p["train"], "test": [{"input": t["input"]} for t in p["test"]]}
                   for name, p in puzzles.items()}, f)
    if with_solutions:
        with open(f"{prefix}_{subset}_solutions.json", "w") as f:
            json.dump({name: [t["output"] for t in p["test"]] for name, p in puzzles.items()}, f)


def load_set(dataset_dir, split):
    return {field: np.load(os.path.join(dataset_dir, split, f"all__{field}.npy"))
            for field in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")}


def decode(tokens):
    """Tokens of one grid -> (grid, top-left offset)."""
    canvas = tokens.reshape(30, 30).astype(np.int64)
    rows, cols = np.nonzero(canvas >= 2)
    top, left = rows.min(), cols.min()
    return canvas[top:rows.max() + 1, left:cols.max() + 1] - 2, (top, left)


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc")
    write_puzzle_folder(root / "raw", {"training": shared_puzzles("training", TRAINING_IDS),
                                       "evaluation": shared_puzzles("evaluation", EVALUATION_IDS)})
    output_dir = str(root / "out")
    arc.main(["--dataset-dirs", str(root / "raw"), "--output-dir", output_dir, "--num-aug", str(NUM_AUG)])
    return output_dir


@pytest.fixture(scope="module")
def file_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc")
    prefix = str(root / "arc")
    write_challenge_pair(prefix, "training", shared_puzzles("training", TRAINING_IDS))
    write_challenge_pair(prefix, "evaluation", shared_puzzles("evaluation", EVALUATION_IDS))
    output_dir = str(root / "out")
    arc.main(["--input-file-prefix", prefix, "--subsets", "training", "evaluation", "--output-dir", output_dir,
              "--num-aug", str(NUM_AUG), "--seed", "3"])
    return output_dir


# --- token layout --------------------------------------------------------------------------------------

def test_encoded_grid_layout_at_origin_and_offset():
    grid = np.array([[0, 1, 2], [9, 8, 7]], dtype=np.uint8)
    for top, left in [(0, 0), (4, 5)]:
        expected = np.zeros((30, 30), dtype=np.uint8)
        expected[top:top + 2, left:left + 3] = grid + 2
        expected[top + 2, left:left + 3] = 1  # end row below
        expected[top:top + 2, left + 3] = 1  # end column to the right
        tokens = arc.encode_grids(grid[None], np.array([[top, left]]))
        assert tokens.shape == (1, 900) and tokens.dtype == np.uint8
        np.testing.assert_array_equal(tokens[0].reshape(30, 30), expected)
        assert tokens[0].reshape(30, 30)[top + 2, left + 3] == 0  # corner stays pad


def test_end_markers_dropped_at_canvas_edge():
    full = np.full((30, 30), 5, dtype=np.uint8)
    np.testing.assert_array_equal(arc.encode_grids(full[None], np.zeros((1, 2), int))[0], np.full(900, 7))
    # 2x4 grid pushed to the bottom-right corner: no marker row or column fits.
    corner = arc.encode_grids(np.ones((1, 2, 4), np.uint8), np.array([[28, 26]]))[0].reshape(30, 30)
    assert (corner[28:, 26:] == 3).all() and corner.sum() == 8 * 3
    # Full-width grid: marker row only.
    wide = arc.encode_grids(np.zeros((1, 3, 30), np.uint8), np.zeros((1, 2), int))[0].reshape(30, 30)
    assert (wide[:3] == 2).all() and (wide[3] == 1).all() and (wide[4:] == 0).all()


def test_batched_encoding_matches_one_at_a_time():
    rng = np.random.default_rng(0)
    grids = rng.integers(0, 10, size=(6, 7, 4)).astype(np.uint8)
    offsets = np.stack([rng.integers(0, 24, 6), rng.integers(0, 27, 6)], axis=1)
    batched = arc.encode_grids(grids, offsets)
    for grid, offset, tokens in zip(grids, offsets, batched):
        np.testing.assert_array_equal(tokens, arc.encode_grids(grid[None], offset[None])[0])
        decoded, top_left = decode(tokens)
        np.testing.assert_array_equal(decoded, grid)
        assert top_left == tuple(offset)


def test_offset_draws_follow_reference_order():
    # The reference draws, per version: the kept example, then row and column offsets of each other example.
    shapes = [((3, 5), (6, 2)), ((30, 1), (30, 1)), ((4, 4), (9, 9))]
    example_variants = [(arc.dihedral_variants(np.zeros(a, np.uint8)), arc.dihedral_variants(np.zeros(b, np.uint8)))
                        for a, b in shapes]
    transform_ids = np.array([0, 1, 6, 3, 5])
    np.random.seed(11)
    offsets = arc.draw_offsets(example_variants, transform_ids, translate=True)
    after = np.random.randint(0, 1 << 30)
    np.random.seed(11)
    for version, t in enumerate(transform_ids):
        kept = np.random.randint(0, len(shapes))
        assert (offsets[version, kept] == 0).all()
        for example, (inp, out) in enumerate(example_variants):
            if example != kept:
                row = np.random.randint(0, 30 - max(inp[t].shape[0], out[t].shape[0]) + 1)
                col = np.random.randint(0, 30 - max(inp[t].shape[1], out[t].shape[1]) + 1)
                assert (offsets[version, example] == (row, col)).all()
    assert np.random.randint(0, 1 << 30) == after
    # A 30x1 example cannot move along its long side, which transforms 1, 3 and 6 turn into the width.
    transposed = np.isin(transform_ids, [1, 3, 6])
    assert (offsets[~transposed, 1, 0] == 0).all() and (offsets[transposed, 1, 1] == 0).all()


# --- augmentation ---------------------------------------------------------------------------------------

def test_dihedral_round_trip():
    grid = np.arange(12, dtype=np.uint8).reshape(3, 4)
    images = set()
    for t, variant in enumerate(arc.dihedral_variants(grid)):
        assert variant.flags.c_contiguous
        np.testing.assert_array_equal(variant, dihedral_transform(grid, t))
        np.testing.assert_array_equal(inverse_dihedral_transform(variant, t), grid)
        images.add(variant.tobytes() + bytes(variant.shape))
    assert len(images) == 8


def test_stored_versions_map_back_to_the_original(folder_dataset):
    names = json.load(open(os.path.join(folder_dataset, "identifiers.json")))
    train = load_set(folder_dataset, "train")
    original = shared_puzzles("training", ["007bbfb7"])["007bbfb7"]
    pairs = original["train"] + original["test"]
    checked = 0
    for p, identifier in enumerate(train["puzzle_identifiers"]):
        match = re.fullmatch(r"007bbfb7_t(\d)_(\d{10})", names[identifier])
        if not match:
            continue
        transform_id, colour_map = int(match[1]), np.array([int(c) for c in match[2]])
        inverse_map = np.argsort(colour_map)
        for e, row in enumerate(range(train["puzzle_indices"][p], train["puzzle_indices"][p + 1])):
            for tokens, key in ((train["inputs"][row], "input"), (train["labels"][row], "output")):
                grid, _ = decode(tokens)
                np.testing.assert_array_equal(inverse_dihedral_transform(inverse_map[grid], transform_id),
                                              np.array(pairs[e][key]))
        checked += 1
    assert checked == NUM_AUG


def pair_multiset(pairs):
    return tuple(sorted((i.shape, i.tobytes(), o.shape, o.tobytes()) for i, o in pairs))


def versions_of(pairs, versions):
    return [[(m[dihedral_transform(i, t)], m[dihedral_transform(o, t)]) for i, o in pairs] for t, m in versions]


def test_version_key_is_order_free_and_shape_aware():
    a, b = np.arange(4, dtype=np.uint8).reshape(2, 2), np.ones((3, 1), np.uint8)
    identity = np.arange(10, dtype=np.uint8)
    key = lambda pairs: arc.version_key(*arc.flatten_pairs(pairs, 0), identity)
    assert key([(a, b), (b, a)]) == key([(b, a), (a, b)])
    assert key([(a, b)]) != key([(a.reshape(1, 4), b)])
    assert key([(a, b)]) != key([(b, a)])
    assert arc.version_key(*arc.flatten_pairs([(a, b)], 1), identity) == key([(np.rot90(a), np.rot90(b))])


def test_augmentation_rejects_duplicate_versions(capsys):
    # A blank square puzzle looks the same under every transform and colour map.
    blank = [(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8))]
    np.random.seed(0)
    assert len(arc.augment("blank", blank, 6)) == 1
    assert "blank: only 1 distinct versions of 7" in capsys.readouterr().err
    # One colour on a fully symmetric square: only the 9 colour choices differ.
    plus = np.array([[0, 4, 0], [4, 4, 4], [0, 4, 0]], np.uint8)
    versions = arc.augment("plus", [(plus, plus)], 20)
    assert len(versions) == 9
    assert len({pair_multiset(v) for v in versions_of([(plus, plus)], versions)}) == 9


def test_augmentation_draws_full_distinct_groups():
    pairs = [(np.array(e["input"], np.uint8), np.array(e["output"], np.uint8))
             for e in shared_puzzles("training", ["00d62c1b"])["00d62c1b"]["train"]]
    np.random.seed(5)
    versions = arc.augment("00d62c1b", pairs, 8)
    assert len(versions) == 9
    assert len({pair_multiset(v) for v in versions_of(pairs, versions)}) == 9
    for t, colour_map in versions[1:]:
        assert 0 <= t < 8 and colour_map[0] == 0 and sorted(colour_map[1:]) == list(range(1, 10))


# --- dataset contents -----------------------------------------------------------------------------------

def test_identifiers_names_and_uniqueness(folder_dataset):
    names = json.load(open(os.path.join(folder_dataset, "identifiers.json")))
    assert names[0] == "<blank>" and len(names) == len(set(names))
    all_ids = TRAINING_IDS + EVALUATION_IDS
    assert len(names) == 1 + len(all_ids) * (NUM_AUG + 1)
    pattern = re.compile(rf"({'|'.join(all_ids)})(_t[0-7]_0[1-9]{{9}})?")
    for name in names[1:]:
        match = pattern.fullmatch(name)
        assert match, name
        if match[2]:
            assert sorted(match[2][5:]) == list("123456789")
    train = load_set(folder_dataset, "train")
    assert sorted(train["puzzle_identifiers"]) == list(range(1, len(names)))  # every version once in train


def test_evaluation_folder_split_rule(folder_dataset):
    names = json.load(open(os.path.join(folder_dataset, "identifiers.json")))
    sources = {**shared_puzzles("training", TRAINING_IDS), **shared_puzzles("evaluation", EVALUATION_IDS)}
    expected = {"train": {n: len(p["train"]) + (len(p["test"]) if n in TRAINING_IDS else 0)
                          for n, p in sources.items()},
                "test": {n: len(sources[n]["test"]) for n in EVALUATION_IDS}}
    for split in ("train", "test"):
        data = load_set(folder_dataset, split)
        groups = data["group_indices"]
        assert len(groups) - 1 == len(expected[split])
        seen = set()
        for g in range(len(groups) - 1):
            group_names = [names[data["puzzle_identifiers"][p]] for p in range(groups[g], groups[g + 1])]
            base = group_names[0]
            seen.add(base)
            assert len(group_names) == NUM_AUG + 1 and all(n.startswith(base) for n in group_names)
            for p in range(groups[g], groups[g + 1]):
                assert data["puzzle_indices"][p + 1] - data["puzzle_indices"][p] == expected[split][base]
        assert seen == set(expected[split])
    # The evaluation puzzle's test version carries the same name as its demonstrations' version in train.
    test = load_set(folder_dataset, "test")
    first = test["puzzle_indices"][0]
    name = names[test["puzzle_identifiers"][0]]
    label, offset = decode(test["labels"][first])
    np.testing.assert_array_equal(label, sources[name]["test"][0]["output"])
    assert offset == (0, 0)


def test_translation_only_in_train_with_one_example_kept(folder_dataset):
    for split in ("train", "test"):
        data = load_set(folder_dataset, split)
        shifted_any = False
        for p in range(len(data["puzzle_identifiers"])):
            rows = range(data["puzzle_indices"][p], data["puzzle_indices"][p + 1])
            offsets = [decode(data["inputs"][row])[1] for row in rows]
            at_origin = sum(o == (0, 0) for o in offsets)
            assert at_origin >= 1
            shifted_any |= at_origin < len(offsets)
            if split == "test":
                assert at_origin == len(offsets)
        assert shifted_any == (split == "train")


def test_metadata(folder_dataset):
    names = json.load(open(os.path.join(folder_dataset, "identifiers.json")))
    for split in ("train", "test"):
        metadata = load_metadata(folder_dataset, split)
        data = load_set(folder_dataset, split)
        assert (metadata.seq_len, metadata.vocab_size, metadata.pad_id, metadata.ignore_label_id,
                metadata.blank_identifier_id, metadata.sets) == (900, 12, 0, 0, 0, ["all"])
        assert metadata.num_puzzle_identifiers == len(names)
        assert metadata.total_groups == len(data["group_indices"]) - 1
        assert metadata.mean_puzzle_examples == pytest.approx(len(data["inputs"]) / len(data["puzzle_identifiers"]))
        assert data["inputs"].dtype == np.uint8 and data["inputs"].shape[1] == 900
        assert data["inputs"].max() <= 11 and data["labels"].max() <= 11


def test_test_puzzles_json(folder_dataset):
    with open(os.path.join(folder_dataset, "test_puzzles.json")) as f:
        test_puzzles = json.load(f)
    assert test_puzzles == {**shared_puzzles("training", TRAINING_IDS), **shared_puzzles("evaluation", EVALUATION_IDS)}


def test_folder_and_file_inputs_build_the_same_dataset(folder_dataset, tmp_path):
    # Subfolders are read in sorted order (evaluation, training); the same subsets in that order and the
    # same seed give the same dataset from challenge/solution files.
    prefix = str(tmp_path / "arc")
    write_challenge_pair(prefix, "training", shared_puzzles("training", TRAINING_IDS))
    write_challenge_pair(prefix, "evaluation", shared_puzzles("evaluation", EVALUATION_IDS))
    output_dir = str(tmp_path / "out")
    arc.main(["--input-file-prefix", prefix, "--subsets", "evaluation", "training", "--output-dir", output_dir,
              "--num-aug", str(NUM_AUG)])
    for split in ("train", "test"):
        rebuilt = load_set(output_dir, split)
        for field, array in load_set(folder_dataset, split).items():
            np.testing.assert_array_equal(rebuilt[field], array)
    for name in ("identifiers.json", "test_puzzles.json"):
        assert json.load(open(os.path.join(output_dir, name))) == json.load(open(os.path.join(folder_dataset, name)))


def reference_transcription(puzzle_list, test_subset, seed, num_aug):
    """The reference conversion written out one draw at a time (hashes as strings, np.pad canvases)."""
    def grid_hash(g):
        return hashlib.sha256(b"".join(x.to_bytes(1, "big") for x in g.shape) + g.tobytes()).hexdigest()

    def version_hash(version):
        return hashlib.sha256("|".join(sorted(f"{grid_hash(i)}|{grid_hash(o)}" for ex in version.values()
                                               for i, o in ex)).encode()).hexdigest()

    np.random.seed(seed)
    data, names = {}, {}
    for subset, puzzles in puzzle_list:
        puzzles = list(puzzles.items())
        np.random.shuffle(puzzles)
        for name, p in puzzles:
            to_np = lambda es: [(np.array(e["input"], np.uint8), np.array(e["output"], np.uint8)) for e in es]
            test_split = "test" if subset == test_subset else "train"
            converted = {"train": to_np(p["train"])}
            converted.setdefault(test_split, []).extend(to_np(p["test"]))
            group, hashes = [(name, converted)], {version_hash(converted)}
            for _ in range(5 * num_aug):
                t = np.random.randint(0, 8)
                m = np.concatenate([np.arange(0, 1, dtype=np.uint8),
                                    np.random.permutation(np.arange(1, 10, dtype=np.uint8))])
                version = {s: [(dihedral_transform(m[i], t), dihedral_transform(m[o], t)) for i, o in ex]
                           for s, ex in converted.items()}
                if version_hash(version) not in hashes:
                    hashes.add(version_hash(version))
                    group.append((f"{name}_t{t}_{''.join(str(x) for x in m)}", version))
                if len(group) >= num_aug + 1:
                    break
            for split in converted:
                data.setdefault(split, []).append([(n, v[split]) for n, v in group])
    for split in ("train", "test"):
        for group in data[split]:
            for n, _ in group:
                names.setdefault(n, len(names) + 1)
    out = {}
    for split in ("train", "test"):
        inputs, labels = [], []
        for group in data[split]:
            for _, examples in group:
                kept = np.random.randint(0, len(examples))
                for e, (i, o) in enumerate(examples):
                    r = c = 0
                    if split == "train" and e != kept:
                        r = np.random.randint(0, 30 - max(i.shape[0], o.shape[0]) + 1)
                        c = np.random.randint(0, 30 - max(i.shape[1], o.shape[1]) + 1)
                    for grid, sink in ((i, inputs), (o, labels)):
                        canvas = np.pad(grid + 2, ((r, 30 - r - grid.shape[0]), (c, 30 - c - grid.shape[1])))
                        if r + grid.shape[0] < 30:
                            canvas[r + grid.shape[0], c:c + grid.shape[1]] = 1
                        if c + grid.shape[1] < 30:
                            canvas[r:r + grid.shape[0], c + grid.shape[1]] = 1
                        sink.append(canvas.flatten())
        out[split] = (np.stack(inputs), np.stack(labels))
    return out, ["<blank>"] + list(names)


def test_matches_reference_transcription(file_dataset):
    out, names = reference_transcription([("training", shared_puzzles("training", TRAINING_IDS)),
                                          ("evaluation", shared_puzzles("evaluation", EVALUATION_IDS))],
                                         "evaluation", seed=3, num_aug=NUM_AUG)
    assert json.load(open(os.path.join(file_dataset, "identifiers.json"))) == names
    for split, (inputs, labels) in out.items():
        data = load_set(file_dataset, split)
        np.testing.assert_array_equal(data["inputs"], inputs)
        np.testing.assert_array_equal(data["labels"], labels)


def test_subfolders_read_in_name_order(tmp_path):
    names = ["delta", "alpha", "echo", "charlie", "foxtrot", "bravo"]
    puzzle = shared_puzzles("training", ["007bbfb7"])["007bbfb7"]
    write_puzzle_folder(tmp_path, {name: {f"{name}-{i}": puzzle for i in (2, 0, 1)} for name in names})
    loaded = arc.load_puzzle_folders(str(tmp_path))
    assert [subfolder for subfolder, _ in loaded] == sorted(names)
    assert [p.name for p in loaded[0][1]] == ["alpha-0", "alpha-1", "alpha-2"]


def test_name_key_overrides_file_name(tmp_path):
    puzzle = shared_puzzles("training", ["007bbfb7"])["007bbfb7"]
    write_puzzle_folder(tmp_path / "raw", {"training": {"file-stem": {**puzzle, "name": "renamed"}}})
    arc.main(["--dataset-dirs", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "out"), "--num-aug", "0"])
    assert json.load(open(tmp_path / "out" / "identifiers.json")) == ["<blank>", "renamed"]
    assert not os.path.exists(tmp_path / "out" / "test")  # no evaluation folder, no test split


def test_missing_solutions_leave_tests_out(tmp_path, capsys):
    prefix = str(tmp_path / "arc")
    puzzles = shared_puzzles("evaluation", EVALUATION_IDS)
    write_challenge_pair(prefix, "training", shared_puzzles("training", TRAINING_IDS[:1]))
    write_challenge_pair(prefix, "evaluation", puzzles, with_solutions=False)
    output_dir = tmp_path / "out"
    arc.main(["--input-file-prefix", prefix, "--subsets", "training", "evaluation", "--output-dir", str(output_dir),
              "--num-aug", "0"])
    assert "arc_evaluation_solutions.json not found" in capsys.readouterr().err
    assert not os.path.exists(output_dir / "test")
    test_puzzles = json.load(open(output_dir / "test_puzzles.json"))
    first = EVALUATION_IDS[0]
    assert test_puzzles[first]["test"] == [{"input": t["input"]} for t in puzzles[first]["test"]]


def test_preset_values_and_overrides():
    args = arc.parse_args(["--preset", "arc-2"])
    assert args.input_file_prefix.endswith(os.path.join("shared", "data", "arc", "arc-agi"))
    assert os.path.isfile(f"{args.input_file_prefix}_training2_challenges.json")
    assert (args.subsets, args.test_set_name, args.output_dir) == (["training2", "evaluation2"], "evaluation2",
                                                                   "data/arc-2-aug-1000")
    args = arc.parse_args(["--preset", "arc-1", "--subsets", "training", "--output-dir", "x", "--num-aug", "3"])
    assert (args.subsets, args.test_set_name, args.output_dir, args.num_aug) == (["training"], "evaluation", "x", 3)
    args = arc.parse_args([])
    assert args.dataset_dirs == arc.DEFAULT_DATASET_DIRS and args.output_dir == "data/arc-aug-1000"


# --- input errors ---------------------------------------------------------------------------------------

def run_builder_cli(*flags):
    return subprocess.run([sys.executable, BUILDER, *flags], capture_output=True, text=True, timeout=60)


def assert_clean_error(result, output_dir, *fragments):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1]
    assert not os.path.exists(output_dir)
    assert [n for n in os.listdir(os.path.dirname(output_dir)) if n.startswith(".out")] == []


@pytest.mark.parametrize("bad_grid, message", [
    ([[1] * 31] * 2, "2x31"),
    ([[1, 10], [0, 0]], "0..9"),
    ([[1, 2], [3]], "different lengths"),
])
def test_bad_grid_errors(tmp_path, bad_grid, message):
    puzzle = shared_puzzles("training", ["007bbfb7"])["007bbfb7"]
    puzzle["test"][0]["output"] = bad_grid
    write_puzzle_folder(tmp_path / "raw", {"training": {"007bbfb7": puzzle}})
    output_dir = str(tmp_path / "out")
    result = run_builder_cli("--dataset-dirs", str(tmp_path / "raw"), "--output-dir", output_dir, "--num-aug", "1")
    assert_clean_error(result, output_dir, "007bbfb7.json", "test example 0 output", message)


def test_missing_inputs_errors(tmp_path):
    output_dir = str(tmp_path / "out")
    result = run_builder_cli("--dataset-dirs", str(tmp_path / "nowhere"), "--output-dir", output_dir)
    assert_clean_error(result, output_dir, "nowhere", "not found")

    prefix = str(tmp_path / "arc")
    write_challenge_pair(prefix, "training", shared_puzzles("training", TRAINING_IDS[:1]))
    result = run_builder_cli("--input-file-prefix", prefix, "--subsets", "training", "evaluation",
                             "--output-dir", output_dir)
    assert_clean_error(result, output_dir, "arc_evaluation_challenges.json", "not found")

    with open(f"{prefix}_training_solutions.json", "w") as f:
        json.dump({}, f)
    result = run_builder_cli("--input-file-prefix", prefix, "--subsets", "training", "--output-dir", output_dir)
    assert_clean_error(result, output_dir, "arc_training_solutions.json", TRAINING_IDS[0])


def test_duplicate_names_error(tmp_path):
    puzzle = shared_puzzles("training", ["007bbfb7"])["007bbfb7"]
    write_puzzle_folder(tmp_path / "raw", {"training": {"007bbfb7": puzzle}, "evaluation": {"007bbfb7": puzzle}})
    output_dir = str(tmp_path / "out")
    result = run_builder_cli("--dataset-dirs", str(tmp_path / "raw"), "--output-dir", output_dir)
    assert_clean_error(result, output_dir, "'007bbfb7' is used by both")


def test_existing_output_needs_overwrite(tmp_path):
    write_puzzle_folder(tmp_path / "raw", {"training": shared_puzzles("training", TRAINING_IDS[:1])})
    output_dir = tmp_path / "out"
    os.makedirs(output_dir / "stale")
    flags = ["--dataset-dirs", str(tmp_path / "raw"), "--output-dir", str(output_dir), "--num-aug", "0"]
    with pytest.raises(arc.DatasetBuildError, match="already exists"):
        arc.main(flags)
    arc.main(flags + ["--overwrite"])
    assert sorted(os.listdir(output_dir)) == ["identifiers.json", "test_puzzles.json", "train"]


def test_failure_mid_build_leaves_no_folder(tmp_path, monkeypatch):
    # Fail after both splits are written: the half-built dataset must vanish with its temporary folder.
    write_puzzle_folder(tmp_path / "raw", {"evaluation": shared_puzzles("evaluation", EVALUATION_IDS)})

    def fail(*args):
        raise arc.DatasetBuildError("disk full")

    monkeypatch.setattr(arc, "save_test_puzzles", fail)
    with pytest.raises(arc.DatasetBuildError, match="disk full"):
        arc.main(["--dataset-dirs", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "out"), "--num-aug", "2"])
    assert sorted(os.listdir(tmp_path)) == ["raw"]
