"""Text files that are not UTF-8 or not what they claim, through every shared reader: one UserError of the
reader's own kind, naming the file; a UTF-8 byte-order mark is read as UTF-8."""
import json
import os

import pytest

from dataset.common import DatasetBuildError, read_puzzle_csv
from dataset.format import DatasetFormatError, read_identifiers, read_metadata, read_test_puzzles
from dataset.text_file import FileReadError, csv_rows, read_json, read_yaml
from puzzle_tools import compare
from puzzle_tools.sweep import ResultsCsv, SweepError
from training.run_folder import RunFolderError, read_config, read_metrics

LATIN1 = "caf\xe9".encode("latin-1")
SUDOKU_ROW = "x," + "." * 81 + "," + "1" * 81 + ",0\n"

# reader, the file it reads (relative to the folder it is given), valid contents, its error type
READERS = {
    "all_config.yaml": (read_config, "all_config.yaml", "data_path: data/x\nseed: 0\n", RunFolderError),
    "metrics.jsonl": (read_metrics, "metrics.jsonl", '{"step": 1}\n', RunFolderError),
    "dataset.json": (lambda d: read_metadata(d, "test"), "test/dataset.json",
                     json.dumps(dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=4, seq_len=2,
                                     num_puzzle_identifiers=1, total_groups=1, mean_puzzle_examples=1, sets=["all"])),
                     DatasetFormatError),
    "identifiers.json": (read_identifiers, "identifiers.json", '["<blank>", "a"]', DatasetFormatError),
    "test_puzzles.json": (read_test_puzzles, "test_puzzles.json",
                          '{"p": {"train": [], "test": [{"input": [[1]], "output": [[2]]}]}}', DatasetFormatError),
    "builder CSV": (read_puzzle_csv, "train.csv", "source,question,answer,rating\n" + SUDOKU_ROW, DatasetBuildError),
    "compare CSV": (lambda path: compare.read_arm(path, "m", []), "arm.csv", "config_id,m\na,0.5\n",
                    compare.CompareError),
    "sweep CSV": (lambda path: ResultsCsv(path, {}, ""), "results.csv",
                  "config_id,seed,train_time_s,steps_per_s,tokens_per_s,peak_gpu_mem_gib,routing_entropy,"
                  "head_concentration,top1_share,n_H_updates,fixed_overrides,run_dir\n"
                  "base,0,1,1,1,,,,,,,runs/base_seed0\n", SweepError),
}
FOLDER_READERS = {"all_config.yaml", "dataset.json", "identifiers.json", "test_puzzles.json"}
CSV_READERS = {"builder CSV", "compare CSV", "sweep CSV"}

BAD_CONTENTS = {
    "latin-1": (lambda text: text.encode()[:-1] + LATIN1 + b"\n", "holds bytes that are not UTF-8; save it as UTF-8"),
    "UTF-16": (lambda text: text.encode("utf-16"), "holds UTF-16 text; save it as UTF-8"),
    "binary": (lambda text: text.encode() + b"\x00\x01\x02\xff\x00" * 20, ""),
}


def write(tmp_path, reader, contents):
    read, relative, _, _ = READERS[reader]
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(contents)
    return lambda: read(str(tmp_path) if reader in FOLDER_READERS else str(path)), str(path)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("damage", BAD_CONTENTS)
def test_bytes_that_are_not_utf8_text_are_one_error_naming_the_file(tmp_path, reader, damage):
    _, _, text, error = READERS[reader]
    encode, message = BAD_CONTENTS[damage]
    read, path = write(tmp_path, reader, encode(text))
    with pytest.raises(error) as raised:
        read()
    assert str(raised.value).startswith(f"{path}") and message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("reader", READERS)
def test_a_byte_order_mark_is_read_as_utf8(tmp_path, reader):
    _, _, text, _ = READERS[reader]
    read, _ = write(tmp_path, reader, text.encode("utf-8-sig"))
    read()


def test_the_generic_readers_name_the_file_and_the_syntax_error(tmp_path):
    (tmp_path / "a.json").write_text('{"a": 1,}')
    (tmp_path / "a.yaml").write_text("a: [1\n")
    (tmp_path / "a.csv").write_text('a,b\n"1,2\n' + "x" * 200000 + "\n")
    with pytest.raises(FileReadError, match=r"a.json: not valid JSON \(line 1, column 9"):
        read_json(str(tmp_path / "a.json"))
    with pytest.raises(FileReadError, match="a.yaml: not valid YAML"):
        read_yaml(str(tmp_path / "a.yaml"))
    with pytest.raises(FileReadError, match="a.csv: not a CSV file .*field larger than field limit"):
        list(csv_rows(str(tmp_path / "a.csv")))
    with pytest.raises(FileReadError, match="nowhere.json: file not found"):
        read_json(str(tmp_path / "nowhere.json"))
    os.mkdir(tmp_path / "folder.csv")
    with pytest.raises(FileReadError, match="folder.csv: file not found"):
        list(csv_rows(str(tmp_path / "folder.csv")))
