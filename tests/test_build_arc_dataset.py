"""ARC builder: token layout, augmentation, split rule, identifiers, file contents, the --arc-data folder and
its download, and input errors. Puzzles are generated here; a last test reads the real ARC files when
HRM_ARC_DATA names a folder holding them."""
import copy
import hashlib
import json
import os
import re
import zipfile

import numpy as np
import pytest

from command_line import run_cli
from dataset import build_arc_dataset as arc
from dataset.common import dihedral_transform, inverse_dihedral_transform
from dataset.format import read_metadata
from dataset_scripts import run_builder_script

NUM_AUG = 4


def random_grid(rng, shape):
    return rng.integers(0, 10, size=shape).tolist()


def random_shape(rng):
    return tuple(int(side) for side in rng.integers(1, 31, size=2))


def random_puzzle(rng, num_demos, num_tests, first_input_shapes=()):
    """An ARC-like puzzle of random grids (colours 0..9, sides 1..30); its first inputs take the given shapes."""
    pairs = []
    for index in range(num_demos + num_tests):
        input_shape = first_input_shapes[index] if index < len(first_input_shapes) else random_shape(rng)
        # Many ARC puzzles keep the grid's shape; the rest change it.
        output_shape = input_shape if rng.random() < 0.5 else random_shape(rng)
        pairs.append({"input": random_grid(rng, input_shape), "output": random_grid(rng, output_shape)})
    return {"train": pairs[:num_demos], "test": pairs[num_demos:]}


def random_subsets(seed, layouts):
    """subset -> {id: puzzle} from subset -> list of (demonstrations, test pairs, first input shapes).

    Ids are distinct 8-digit hex names like ARC's, listed in sorted order like the ARC Prize files."""
    rng = np.random.default_rng(seed)
    count = sum(len(layout) for layout in layouts.values())
    ids = [f"{value:08x}" for value in rng.choice(1 << 32, size=count, replace=False)]
    subsets = {}
    for subset, layout in layouts.items():
        subset_ids, ids = sorted(ids[:len(layout)]), ids[len(layout):]
        subsets[subset] = {puzzle_id: random_puzzle(rng, *spec) for puzzle_id, spec in zip(subset_ids, layout)}
    return subsets


# Edge shapes (1x1, 30x30, one-row and one-column grids) among random rectangular ones.
PUZZLES = random_subsets(2024, {
    "training": [(3, 1, [(1, 1), (30, 30)]), (4, 1, [(30, 1), (1, 30)]), (2, 1, [(2, 29), (7, 3)])],
    "evaluation": [(3, 1, [(5, 7)]), (2, 2, [(29, 3)])],  # the second has two test pairs
})
TRAINING_IDS = list(PUZZLES["training"])
EVALUATION_IDS = list(PUZZLES["evaluation"])


def sample_puzzles(subset, ids):
    """Fresh copies of generated puzzles (with their test outputs), safe to modify."""
    return {i: copy.deepcopy(PUZZLES[subset][i]) for i in ids}


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
    write_puzzle_folder(root / "raw", {"training": sample_puzzles("training", TRAINING_IDS),
                                       "evaluation": sample_puzzles("evaluation", EVALUATION_IDS)})
    output_dir = str(root / "out")
    arc.main(["--dataset-dirs", str(root / "raw"), "--output-dir", output_dir, "--num-aug", str(NUM_AUG)])
    return output_dir


@pytest.fixture(scope="module")
def file_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc")
    prefix = str(root / "arc")
    write_challenge_pair(prefix, "training", sample_puzzles("training", TRAINING_IDS))
    write_challenge_pair(prefix, "evaluation", sample_puzzles("evaluation", EVALUATION_IDS))
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
    puzzle_id = TRAINING_IDS[0]
    original = sample_puzzles("training", [puzzle_id])[puzzle_id]
    pairs = original["train"] + original["test"]
    checked = 0
    for p, identifier in enumerate(train["puzzle_identifiers"]):
        match = re.fullmatch(rf"{puzzle_id}_t(\d)_(\d{{10}})", names[identifier])
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
    puzzle_id = TRAINING_IDS[1]
    pairs = [(np.array(e["input"], np.uint8), np.array(e["output"], np.uint8))
             for e in sample_puzzles("training", [puzzle_id])[puzzle_id]["train"]]
    np.random.seed(5)
    versions = arc.augment(puzzle_id, pairs, 8)
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
    sources = {**sample_puzzles("training", TRAINING_IDS), **sample_puzzles("evaluation", EVALUATION_IDS)}
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
        metadata = read_metadata(folder_dataset, split)
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
    assert test_puzzles == {**sample_puzzles("training", TRAINING_IDS), **sample_puzzles("evaluation", EVALUATION_IDS)}


def assert_same_dataset(built, expected):
    for split in ("train", "test"):
        rebuilt = load_set(built, split)
        for field, array in load_set(expected, split).items():
            np.testing.assert_array_equal(rebuilt[field], array, err_msg=f"{split} {field}")
    for name in ("identifiers.json", "test_puzzles.json"):
        assert json.load(open(os.path.join(built, name))) == json.load(open(os.path.join(expected, name))), name


def test_folder_and_file_inputs_build_the_same_dataset(folder_dataset, tmp_path):
    # Subfolders are read in sorted order (evaluation, training); the same subsets in that order and the
    # same seed give the same dataset from challenge/solution files.
    prefix = str(tmp_path / "arc")
    write_challenge_pair(prefix, "training", sample_puzzles("training", TRAINING_IDS))
    write_challenge_pair(prefix, "evaluation", sample_puzzles("evaluation", EVALUATION_IDS))
    output_dir = str(tmp_path / "out")
    arc.main(["--input-file-prefix", prefix, "--subsets", "evaluation", "training", "--output-dir", output_dir,
              "--num-aug", str(NUM_AUG)])
    assert_same_dataset(output_dir, folder_dataset)


@pytest.mark.parametrize("choice, training_ids, evaluation_ids", [
    (["--limit", "1"], TRAINING_IDS[:1], EVALUATION_IDS[:1]),  # the first of each subset, in file order
    (["--puzzle-ids", TRAINING_IDS[2], EVALUATION_IDS[1], TRAINING_IDS[0]], TRAINING_IDS[::2], EVALUATION_IDS[1:]),
    (["--puzzle-ids", *TRAINING_IDS[1:], EVALUATION_IDS[0], "--limit", "1"], TRAINING_IDS[1:2], EVALUATION_IDS[:1]),
])
def test_chosen_puzzles_build_as_if_alone_in_the_inputs(tmp_path, choice, training_ids, evaluation_ids):
    everything, alone = str(tmp_path / "everything"), str(tmp_path / "alone")
    write_challenge_pair(everything, "training", sample_puzzles("training", TRAINING_IDS))
    write_challenge_pair(everything, "evaluation", sample_puzzles("evaluation", EVALUATION_IDS))
    write_challenge_pair(alone, "training", sample_puzzles("training", training_ids))
    write_challenge_pair(alone, "evaluation", sample_puzzles("evaluation", evaluation_ids))
    common = ["--subsets", "training", "evaluation", "--num-aug", "2", "--seed", "5", "--output-dir"]
    arc.main(["--input-file-prefix", everything, *choice, *common, str(tmp_path / "chosen")])
    arc.main(["--input-file-prefix", alone, *common, str(tmp_path / "expected")])
    assert_same_dataset(str(tmp_path / "chosen"), str(tmp_path / "expected"))
    assert sorted(json.load(open(tmp_path / "chosen" / "test_puzzles.json"))) == sorted(training_ids + evaluation_ids)


def test_puzzle_choice_errors(tmp_path):
    prefix = str(tmp_path / "arc")
    write_challenge_pair(prefix, "training", sample_puzzles("training", TRAINING_IDS))
    write_challenge_pair(prefix, "evaluation", sample_puzzles("evaluation", EVALUATION_IDS))
    output_dir = str(tmp_path / "out")
    source = ["--input-file-prefix", prefix, "--subsets", "training", "evaluation", "--output-dir", output_dir]
    result = run_builder_cli(*source, "--puzzle-ids", EVALUATION_IDS[0], "nosuchid", "0000beef")
    assert_clean_error(result, output_dir, "--puzzle-ids: no puzzle nosuchid, 0000beef in the inputs",
                       "subsets training, evaluation")
    result = run_builder_cli(*source, "--puzzle-ids", TRAINING_IDS[0])
    assert_clean_error(result, output_dir, "none of subset 'evaluation'")
    for limit in ("0", "-2"):
        result = run_builder_cli(*source, "--limit", limit)
        assert_clean_error(result, output_dir, f"--limit must be at least 1, got {limit}")
    with pytest.raises(arc.DatasetBuildError, match="with --download, give --preset or --subsets"):
        arc.parse_args(["--download", "--limit", "3"])


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
    out, names = reference_transcription([("training", sample_puzzles("training", TRAINING_IDS)),
                                          ("evaluation", sample_puzzles("evaluation", EVALUATION_IDS))],
                                         "evaluation", seed=3, num_aug=NUM_AUG)
    assert json.load(open(os.path.join(file_dataset, "identifiers.json"))) == names
    for split, (inputs, labels) in out.items():
        data = load_set(file_dataset, split)
        np.testing.assert_array_equal(data["inputs"], inputs)
        np.testing.assert_array_equal(data["labels"], labels)


def test_subfolders_read_in_name_order(tmp_path):
    names = ["delta", "alpha", "echo", "charlie", "foxtrot", "bravo"]
    puzzle = sample_puzzles("training", TRAINING_IDS[:1])[TRAINING_IDS[0]]
    write_puzzle_folder(tmp_path, {name: {f"{name}-{i}": puzzle for i in (2, 0, 1)} for name in names})
    loaded = arc.load_puzzle_folders(str(tmp_path))
    assert [subfolder for subfolder, _ in loaded] == sorted(names)
    assert [p.name for p in loaded[0][1]] == ["alpha-0", "alpha-1", "alpha-2"]


def test_a_folder_without_subset_folders_names_itself_and_the_layout(tmp_path):
    puzzle = sample_puzzles("training", TRAINING_IDS[:1])[TRAINING_IDS[0]]
    write_puzzle_folder(tmp_path, {"training": {"a1": puzzle}})
    (tmp_path / "empty").mkdir()
    layout = "no subfolder of <id>.json puzzles (a --dataset-dirs folder holds subsets, such as training/ and evaluation/)"
    with pytest.raises(arc.DatasetBuildError) as error:
        arc.load_puzzle_folders(str(tmp_path / "training"))  # the subset folder itself, not its parent
    assert str(error.value) == f"{tmp_path / 'training'}: {layout}; it holds puzzle files itself: give its parent folder"
    with pytest.raises(arc.DatasetBuildError) as error:
        arc.load_puzzle_folders(str(tmp_path / "empty"))
    assert str(error.value) == f"{tmp_path / 'empty'}: {layout}"


def test_name_key_overrides_file_name(tmp_path, capsys):
    puzzle = sample_puzzles("training", TRAINING_IDS[:1])[TRAINING_IDS[0]]
    write_puzzle_folder(tmp_path / "raw", {"training": {"file-stem": {**puzzle, "name": "renamed"}}})
    arc.main(["--dataset-dirs", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "out"), "--num-aug", "0"])
    assert json.load(open(tmp_path / "out" / "identifiers.json")) == ["<blank>", "renamed"]
    assert not os.path.exists(tmp_path / "out" / "test")  # no evaluation folder, no test split
    assert capsys.readouterr().err.splitlines()[0] == (
        "warning: no puzzles of the test subset 'evaluation' (--test-set-name) among the inputs (subsets training): "
        "the dataset has no test split")


def test_missing_solutions_leave_tests_out(tmp_path, capsys):
    prefix = str(tmp_path / "arc")
    puzzles = sample_puzzles("evaluation", EVALUATION_IDS)
    write_challenge_pair(prefix, "training", sample_puzzles("training", TRAINING_IDS[:1]))
    write_challenge_pair(prefix, "evaluation", puzzles, with_solutions=False)
    output_dir = tmp_path / "out"
    arc.main(["--input-file-prefix", prefix, "--subsets", "training", "evaluation", "--output-dir", str(output_dir),
              "--num-aug", "0"])
    assert "arc_evaluation_solutions.json not found" in capsys.readouterr().err
    assert not os.path.exists(output_dir / "test")
    test_puzzles = json.load(open(output_dir / "test_puzzles.json"))
    first = EVALUATION_IDS[0]
    assert test_puzzles[first]["test"] == [{"input": t["input"]} for t in puzzles[first]["test"]]


def test_reference_defaults_and_preset_values(monkeypatch):
    monkeypatch.delenv("HRM_ARC_DATA", raising=False)
    args = arc.parse_args([])  # the reference's defaults
    assert (args.dataset_dirs, args.output_dir, args.test_set_name, args.seed, args.num_aug) == (
        ["dataset/raw-data/ARC-AGI/data", "dataset/raw-data/ConceptARC/corpus"], "data/arc-aug-1000", "evaluation",
        42, 1000)
    args = arc.parse_args(["--preset", "arc-2"])
    assert (args.arc_data, args.subsets, args.test_set_name, args.output_dir, args.dataset_dirs) == (
        "data/arc-prize", ["training2", "evaluation2"], "evaluation2", "data/arc-2-aug-1000", None)
    args = arc.parse_args(["--preset", "arc-1"])
    assert (args.subsets, args.test_set_name, args.output_dir) == (["training", "evaluation", "concept"],
                                                                   "evaluation", "data/arc-aug-1000")
    args = arc.parse_args(["--preset", "arc-1", "--subsets", "training", "--output-dir", "x", "--num-aug", "3"])
    assert (args.subsets, args.test_set_name, args.output_dir, args.num_aug) == (["training"], "evaluation", "x", 3)


def test_arc_data_folder_flag_beats_environment_beats_default(monkeypatch):
    monkeypatch.delenv("HRM_ARC_DATA", raising=False)
    assert arc.parse_args(["--preset", "arc-1"]).arc_data == "data/arc-prize"
    monkeypatch.setenv("HRM_ARC_DATA", "")  # empty counts as unset
    assert arc.parse_args(["--preset", "arc-1"]).arc_data == "data/arc-prize"
    monkeypatch.setenv("HRM_ARC_DATA", "/from/env")
    assert arc.parse_args(["--preset", "arc-1"]).arc_data == "/from/env"
    assert arc.parse_args(["--preset", "arc-1", "--arc-data", "/from/flag"]).arc_data == "/from/flag"


def write_arc_data(folder, puzzles_by_subset):
    """An --arc-data folder holding ARC Prize-format pairs of the given puzzles."""
    os.makedirs(folder, exist_ok=True)
    for subset, puzzles in puzzles_by_subset.items():
        write_challenge_pair(os.path.join(folder, "arc-agi"), subset, puzzles)
    return str(folder)


def test_preset_reads_the_arc_data_folder(tmp_path, monkeypatch):
    # Three folders with different training2 subsets: the default one under the working directory, the one
    # in $HRM_ARC_DATA and the one given by --arc-data. The flag wins over the variable, which wins over
    # the default.
    def arc_2_subsets(num_training):
        return {"training2": sample_puzzles("training", TRAINING_IDS[:num_training]),
                "evaluation2": sample_puzzles("evaluation", EVALUATION_IDS)}

    folders = {"default": tmp_path / "data" / "arc-prize", "env": tmp_path / "env", "flag": tmp_path / "flag"}
    for num_training, folder in enumerate(folders.values(), start=1):
        write_arc_data(folder, arc_2_subsets(num_training))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HRM_ARC_DATA", raising=False)
    build = ["--preset", "arc-2", "--num-aug", "0", "--output-dir"]
    arc.main(build + ["default-out"])
    monkeypatch.setenv("HRM_ARC_DATA", str(folders["env"]))
    arc.main(build + ["env-out"])
    arc.main(build + ["flag-out", "--arc-data", str(folders["flag"])])
    for num_training, output_dir in enumerate(("default-out", "env-out", "flag-out"), start=1):
        with open(tmp_path / output_dir / "test_puzzles.json") as f:
            assert json.load(f) == {i: p for puzzles in arc_2_subsets(num_training).values()
                                    for i, p in puzzles.items()}, output_dir
        assert read_metadata(str(tmp_path / output_dir), "test").total_groups == len(EVALUATION_IDS)


def assert_arc_data_hint(line, folder):
    """The one-line error for a missing --arc-data folder or file: which folder, and where to get the files."""
    assert line.startswith("error: ARC data folder ") and str(folder) in line
    for hint in ("github.com/fchollet/ARC-AGI", "github.com/arcprize/ARC-AGI-2",
                 "github.com/victorvikram/ConceptARC", "--download", "--arc-data", "HRM_ARC_DATA"):
        assert hint in line, hint


def test_missing_arc_data_folder_is_one_line_naming_it(tmp_path):
    # Default folder, relative to the working directory.
    result = run_builder_cli("--preset", "arc-1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert_arc_data_hint(result.stderr.strip(), tmp_path / "data" / "arc-prize")
    assert "not found" in result.stderr
    # The folder named by the environment.
    result = run_builder_cli("--preset", "arc-2", cwd=tmp_path, env_updates={"HRM_ARC_DATA": str(tmp_path / "env")})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert_arc_data_hint(result.stderr.strip(), tmp_path / "env")
    assert os.listdir(tmp_path) == []


def test_missing_arc_data_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HRM_ARC_DATA", str(tmp_path / "elsewhere"))
    folder = write_arc_data(tmp_path / "arc", PUZZLES)  # training and evaluation, no concept
    os.remove(os.path.join(folder, "arc-agi_evaluation_solutions.json"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: arc.main(["--preset", "arc-1", "--arc-data", folder,
                                  "--output-dir", str(tmp_path / "out")]))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert_arc_data_hint(lines[0], folder)
    assert "has no arc-agi_evaluation_solutions.json, arc-agi_concept_challenges.json, " \
           "arc-agi_concept_solutions.json (" in lines[0]
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("flags, message", [
    (["--dataset-dirs", "d", "--arc-data", "x"], "--dataset-dirs cannot be combined"),
    (["--dataset-dirs", "d", "--download"], "--dataset-dirs cannot be combined"),
    (["--input-file-prefix", "p", "--subsets", "s", "--download"], "--arc-data and --download do not apply"),
    (["--input-file-prefix", "p"], "--input-file-prefix needs --subsets"),
    (["--arc-data", "x"], "--arc-data is read by --preset or --subsets"),
])
def test_contradictory_source_flags(flags, message):
    with pytest.raises(arc.DatasetBuildError, match=re.escape(message)):
        arc.parse_args(flags)


# --- --download -----------------------------------------------------------------------------------------

# Puzzles of the fake repositories: hex ids for ARC-AGI and ARC-AGI-2, concept names for ConceptARC.
DOWNLOAD_PUZZLES = random_subsets(7, {
    "training": [(2, 1, [(3, 3)]), (3, 1, [])], "evaluation": [(2, 2, [(1, 1)]), (2, 1, [])],
    "training2": [(2, 1, [(30, 30)]), (2, 1, [])], "evaluation2": [(3, 1, [])],
})
CONCEPT_PUZZLES = {name: random_puzzle(np.random.default_rng(index), 3, index % 2 + 1)
                   for index, name in enumerate(["Copy1", "Copy10", "Copy2", "AboveBelow1"])}
ALL_SUBSETS = ["training", "evaluation", "concept", "training2", "evaluation2"]


def write_archive(path, top_folder, files):
    """A GitHub-style zip archive: every file under `top_folder`/; JSON-encodes non-string contents."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top_folder}/", "")
        for name, content in files.items():
            archive.writestr(f"{top_folder}/{name}", content if isinstance(content, str) else json.dumps(content))


@pytest.fixture
def fake_github(tmp_path, monkeypatch):
    """Serve the three repositories' archives from file:// URLs at <root>/<owner>/<name>/<branch>.zip."""
    root = tmp_path / "github"
    arc_agi = {f"data/{folder}/{i}.json": p for folder in ("training", "evaluation")
               for i, p in DOWNLOAD_PUZZLES[folder].items()}
    arc_agi.update({"README.md": "# ARC", "data/training/notes.txt": "not a puzzle",
                    "apps/js/testing_interface.js": "// an app"})
    write_archive(root / "fchollet" / "ARC-AGI" / "master.zip", "ARC-AGI-master", arc_agi)
    arc_agi_2 = {f"data/{folder}/{i}.json": p for folder, subset in (("training", "training2"),
                                                                     ("evaluation", "evaluation2"))
                 for i, p in DOWNLOAD_PUZZLES[subset].items()}
    write_archive(root / "arcprize" / "ARC-AGI-2" / "main.zip", "ARC-AGI-2-main", arc_agi_2)
    concept = {f"corpus/{re.sub(r'[0-9]+$', '', name)}/{name}.json": p for name, p in CONCEPT_PUZZLES.items()}
    extra_puzzle = random_puzzle(np.random.default_rng(99), 2, 1)
    concept.update({"corpus/Copy/.DS_Store": "\0\1", "corpus/AboveBelow/AboveBelowMinimal.json": extra_puzzle,
                    "corpus/Copy/OriginalARCEvalSet/deeper.json": extra_puzzle,
                    "MinimalTasks/CopyMinimal.json": extra_puzzle, "README.md": "# ConceptARC"})
    write_archive(root / "victorvikram" / "ConceptARC" / "main.zip", "ConceptARC-main", concept)
    monkeypatch.setattr(arc, "ARCHIVE_URL", root.as_uri() + "/{repository}/{branch}.zip")
    return root


def expected_arc_data_files():
    """file name -> content of the ARC Prize-format files the fake repositories convert to."""
    puzzles = {**DOWNLOAD_PUZZLES, "concept": dict(sorted(CONCEPT_PUZZLES.items()))}
    files = {}
    for subset in ALL_SUBSETS:
        files[f"arc-agi_{subset}_challenges.json"] = {
            i: {"train": p["train"], "test": [{"input": t["input"]} for t in p["test"]]}
            for i, p in puzzles[subset].items()}
        files[f"arc-agi_{subset}_solutions.json"] = {i: [t["output"] for t in p["test"]]
                                                     for i, p in puzzles[subset].items()}
    return files


def test_download_converts_the_repositories(fake_github, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "arc-data"
    arc.main(["--download", "--arc-data", str(folder)])  # downloads only: no preset, no subsets
    expected = expected_arc_data_files()
    assert sorted(os.listdir(folder)) == sorted(expected)  # no temporary files left
    for name, content in expected.items():
        with open(folder / name) as f:
            written = json.load(f)
        assert written == content, name
        assert list(written) == sorted(written), name  # ids in sorted order
    with open(folder / "arc-agi_concept_solutions.json") as f:
        assert list(json.load(f)) == ["AboveBelow1", "Copy1", "Copy10", "Copy2"]  # no Minimal, nothing deeper
    assert "wrote" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["arc-data", "github"]  # nothing built


def test_downloaded_folder_builds_with_presets(fake_github, tmp_path, monkeypatch):
    folder = str(tmp_path / "arc-data")
    arc.main(["--download", "--preset", "arc-1", "--arc-data", folder, "--num-aug", "2",
              "--output-dir", str(tmp_path / "arc-1")])

    def no_fetch(url):
        raise AssertionError(f"fetched {url} although every file is present")

    monkeypatch.setattr(arc, "fetch_archive", no_fetch)
    arc.main(["--download", "--preset", "arc-2", "--arc-data", folder, "--num-aug", "2",
              "--output-dir", str(tmp_path / "arc-2")])
    for preset, subsets, test_subset in (("arc-1", ["training", "evaluation", "concept"], "evaluation"),
                                         ("arc-2", ["training2", "evaluation2"], "evaluation2")):
        source_puzzles = {**DOWNLOAD_PUZZLES, "concept": CONCEPT_PUZZLES}
        puzzles = {i: p for subset in subsets for i, p in source_puzzles[subset].items()}
        with open(tmp_path / preset / "test_puzzles.json") as f:
            assert json.load(f) == puzzles
        names = json.load(open(tmp_path / preset / "identifiers.json"))
        assert len(names) == 1 + 3 * len(puzzles)
        test = load_set(tmp_path / preset, "test")
        test_groups = {names[test["puzzle_identifiers"][g]] for g in test["group_indices"][:-1]}
        assert test_groups == set(DOWNLOAD_PUZZLES[test_subset])


def test_download_keeps_existing_files(fake_github, tmp_path, capsys):
    folder = tmp_path / "arc-data"
    os.makedirs(folder)
    kept = folder / "arc-agi_training_challenges.json"
    kept.write_text('{"mine": "do not touch"}')
    (folder / "notes.txt").write_text("mine too")
    arc.main(["--download", "--arc-data", str(folder)])
    assert kept.read_text() == '{"mine": "do not touch"}' and (folder / "notes.txt").read_text() == "mine too"
    assert f"kept existing {kept}" in capsys.readouterr().out
    expected = expected_arc_data_files()
    for name in expected:
        if name != kept.name:
            assert json.load(open(folder / name)) == expected[name], name
    assert sorted(os.listdir(folder)) == sorted(list(expected) + ["notes.txt"])


def test_download_into_a_file_is_an_error(fake_github, tmp_path):
    not_a_folder = tmp_path / "arc-data"
    not_a_folder.write_text("mine")
    with pytest.raises(arc.DatasetBuildError, match="arc-data: not a folder"):
        arc.main(["--download", "--arc-data", str(not_a_folder)])
    assert not_a_folder.read_text() == "mine"


def run_download(folder, capsys):
    """Run `--download` like the command line; returns (exit status, stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: arc.main(["--download", "--arc-data", str(folder)]))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exit_info.value.code, err.splitlines()


def test_offline_download_is_one_line(fake_github, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(arc, "ARCHIVE_URL", (tmp_path / "offline").as_uri() + "/{repository}/{branch}.zip")
    status, lines = run_download(tmp_path / "arc-data", capsys)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: could not download file://") and "ARC-AGI/master.zip" in lines[0]
    assert os.listdir(tmp_path / "arc-data") == []


@pytest.mark.parametrize("broken, message", [("missing", "could not download file://"),
                                             ("not-a-zip", "not a zip archive")])
def test_failed_second_download_keeps_the_first(fake_github, tmp_path, capsys, broken, message):
    archive = fake_github / "arcprize" / "ARC-AGI-2" / "main.zip"
    if broken == "missing":
        os.remove(archive)
    else:
        archive.write_text("<html>rate limited</html>")
    folder = tmp_path / "arc-data"
    status, lines = run_download(folder, capsys)
    assert status == 2
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    assert message in lines[-1] and "ARC-AGI-2/main.zip" in lines[-1]
    # ARC-AGI came first and its files stay; nothing half-written is left.
    assert sorted(os.listdir(folder)) == [f"arc-agi_{subset}_{kind}.json" for subset in ("evaluation", "training")
                                          for kind in ("challenges", "solutions")]


def test_download_rejects_bad_puzzle_files(fake_github, tmp_path):
    folder = str(tmp_path / "arc-data")
    puzzle_id = next(iter(DOWNLOAD_PUZZLES["evaluation"]))
    broken = copy.deepcopy(DOWNLOAD_PUZZLES["evaluation"][puzzle_id])
    del broken["test"][0]["output"]
    arc_agi = fake_github / "fchollet" / "ARC-AGI" / "master.zip"
    write_archive(arc_agi, "ARC-AGI-master", {f"data/evaluation/{puzzle_id}.json": broken})
    with pytest.raises(arc.DatasetBuildError, match=f"data/evaluation/{puzzle_id}.json: a test pair has no"):
        arc.main(["--download", "--arc-data", folder])
    write_archive(arc_agi, "ARC-AGI-master",
                  {f"data/evaluation/{puzzle_id}.json": DOWNLOAD_PUZZLES["evaluation"][puzzle_id]})
    with pytest.raises(arc.DatasetBuildError, match="no puzzle files match data/training/"):
        arc.main(["--download", "--arc-data", folder])
    assert os.listdir(folder) == []
    # Two concept folders holding the same puzzle name would give one id two puzzles.
    puzzle = DOWNLOAD_PUZZLES["evaluation"][puzzle_id]
    write_archive(fake_github / "fchollet" / "ARC-AGI" / "master.zip", "ARC-AGI-master",
                  {f"data/{subset}/{i}.json": p for subset in ("training", "evaluation")
                   for i, p in DOWNLOAD_PUZZLES[subset].items()})
    write_archive(fake_github / "victorvikram" / "ConceptARC" / "main.zip", "ConceptARC-main",
                  {"corpus/Copy/Copy1.json": puzzle, "corpus/Count/Copy1.json": puzzle})
    with pytest.raises(arc.DatasetBuildError, match="corpus/Count/Copy1.json: puzzle id Copy1 appears twice"):
        arc.main(["--download", "--arc-data", folder])


# --- input errors ---------------------------------------------------------------------------------------

def run_builder_cli(*flags, **kwargs):
    return run_builder_script("build_arc_dataset.py", *flags, **kwargs)


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
    puzzle_id = TRAINING_IDS[0]
    puzzle = sample_puzzles("training", [puzzle_id])[puzzle_id]
    puzzle["test"][0]["output"] = bad_grid
    write_puzzle_folder(tmp_path / "raw", {"training": {puzzle_id: puzzle}})
    output_dir = str(tmp_path / "out")
    result = run_builder_cli("--dataset-dirs", str(tmp_path / "raw"), "--output-dir", output_dir, "--num-aug", "1")
    assert_clean_error(result, output_dir, f"{puzzle_id}.json", "test example 0 output", message)


def test_a_puzzle_with_no_pairs_is_one_error():
    with pytest.raises(arc.DatasetBuildError, match=r"p.json: the puzzle has no pairs \(its \"train\" and \"test\" "
                                                r"lists are empty\)"):
        arc.parse_puzzle({"train": [], "test": []}, "p", "p.json")


def test_missing_inputs_errors(tmp_path):
    output_dir = str(tmp_path / "out")
    result = run_builder_cli("--dataset-dirs", str(tmp_path / "nowhere"), "--output-dir", output_dir)
    assert_clean_error(result, output_dir, "nowhere", "not found")

    prefix = str(tmp_path / "arc")
    write_challenge_pair(prefix, "training", sample_puzzles("training", TRAINING_IDS[:1]))
    result = run_builder_cli("--input-file-prefix", prefix, "--subsets", "training", "evaluation",
                             "--output-dir", output_dir)
    assert_clean_error(result, output_dir, "arc_evaluation_challenges.json", "not found")

    with open(f"{prefix}_training_solutions.json", "w") as f:
        json.dump({}, f)
    result = run_builder_cli("--input-file-prefix", prefix, "--subsets", "training", "--output-dir", output_dir)
    assert_clean_error(result, output_dir, "arc_training_solutions.json", TRAINING_IDS[0])


def test_duplicate_names_error(tmp_path):
    puzzle_id = TRAINING_IDS[0]
    puzzle = sample_puzzles("training", [puzzle_id])[puzzle_id]
    write_puzzle_folder(tmp_path / "raw", {"training": {puzzle_id: puzzle}, "evaluation": {puzzle_id: puzzle}})
    output_dir = str(tmp_path / "out")
    result = run_builder_cli("--dataset-dirs", str(tmp_path / "raw"), "--output-dir", output_dir)
    assert_clean_error(result, output_dir, f"'{puzzle_id}' is used by both")


def test_existing_output_needs_overwrite(tmp_path):
    write_puzzle_folder(tmp_path / "raw", {"training": sample_puzzles("training", TRAINING_IDS[:1])})
    output_dir = tmp_path / "out"
    os.makedirs(output_dir / "notes")
    flags = ["--dataset-dirs", str(tmp_path / "raw"), "--output-dir", str(output_dir), "--num-aug", "0"]
    with pytest.raises(arc.DatasetBuildError, match="already exists"):
        arc.main(flags)
    # A folder holding something other than a dataset is never replaced, even with --overwrite.
    with pytest.raises(arc.DatasetBuildError, match="holds something other than a dataset"):
        arc.main(flags + ["--overwrite"])
    assert os.listdir(output_dir) == ["notes"]
    os.rmdir(output_dir / "notes")
    arc.main(flags + ["--overwrite"])  # an empty folder is replaced
    assert sorted(os.listdir(output_dir)) == ["identifiers.json", "test_puzzles.json", "train"]
    arc.main(flags + ["--overwrite", "--num-aug", "1"])  # and so is a dataset folder
    assert sorted(os.listdir(output_dir)) == ["identifiers.json", "test_puzzles.json", "train"]


def test_failure_mid_build_leaves_no_folder(tmp_path, monkeypatch):
    # Fail after both splits are written: the half-built dataset must vanish with its temporary folder.
    write_puzzle_folder(tmp_path / "raw", {"evaluation": sample_puzzles("evaluation", EVALUATION_IDS)})

    def fail(*args):
        raise arc.DatasetBuildError("disk full")

    monkeypatch.setattr(arc, "save_test_puzzles", fail)
    with pytest.raises(arc.DatasetBuildError, match="disk full"):
        arc.main(["--dataset-dirs", str(tmp_path / "raw"), "--output-dir", str(tmp_path / "out"), "--num-aug", "2"])
    assert sorted(os.listdir(tmp_path)) == ["raw"]


# --- the real ARC files ---------------------------------------------------------------------------------

REAL_ARC_DATA = os.environ.get("HRM_ARC_DATA")
REAL_SUBSET_SIZES = {"training": 400, "evaluation": 400, "concept": 160, "training2": 1000, "evaluation2": 120}


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ARC_DATA or not all(os.path.isfile(arc.arc_data_file(REAL_ARC_DATA, subset, "solutions"))
                                                for subset in REAL_SUBSET_SIZES),
                    reason="set HRM_ARC_DATA to a folder of the ARC Prize-format files (arc-agi_<subset>_"
                           "{challenges,solutions}.json for training, evaluation, concept, training2, evaluation2)")
def test_real_arc_files(tmp_path):
    sources = dict(arc.load_challenge_files(os.path.join(REAL_ARC_DATA, "arc-agi"), list(REAL_SUBSET_SIZES)))
    assert {subset: len(puzzles) for subset, puzzles in sources.items()} == REAL_SUBSET_SIZES
    for subset in ("training", "evaluation", "training2", "evaluation2"):
        names = [puzzle.name for puzzle in sources[subset]]
        assert names == sorted(names), f"{subset}: ids not in the sorted order --download writes"
    # ConceptARC: 16 concepts of 10 puzzles each, no warm-up ("Minimal") puzzles, as --download keeps.
    concepts = {}
    for puzzle in sources["concept"]:
        concept, number = re.fullmatch(r"([A-Za-z0-9]+?)(\d+)", puzzle.name).groups()
        concepts.setdefault(concept, []).append(int(number))
    assert len(concepts) == 16 and all(sorted(numbers) == list(range(1, 11)) for numbers in concepts.values())
    arc.main(["--preset", "arc-2", "--arc-data", REAL_ARC_DATA, "--num-aug", "0",
              "--output-dir", str(tmp_path / "arc-2")])
    assert read_metadata(str(tmp_path / "arc-2"), "test").total_groups == 120
    assert len(json.load(open(tmp_path / "arc-2" / "test_puzzles.json"))) == 1120
