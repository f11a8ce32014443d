"""Reading table files (CSV/TSV encodings and line numbers, Parquet, NumPy), the shared label
checks and the numeric order of integer labels."""

from __future__ import annotations

import builtins
import itertools
import random

import numpy as np
import pytest

from mtl_lightning.data.encodings import TextEncodingError, decode_text
from mtl_lightning.data.label_checks import _candidate_pairs, label_problems, near_duplicate
from mtl_lightning.data.manifest import ManifestError
from mtl_lightning.data.table_files import Table, feature_matrix, read_table
from mtl_lightning.data.vocab import LabelVocab


def _write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# ---------------------------------------------------------------- CSV / TSV
def test_csv_keeps_exact_line_numbers_across_bom_crlf_blank_and_multiline_cells(tmp_path):
    text = '\ufeffx0,note,y\r\n1,plain,a\r\n\r\n2,"two\r\nlines",b\r\n3,after,c\r\n'
    table = read_table(_write(tmp_path / "t.csv", text))
    assert table.columns == ["x0", "note", "y"]  # the BOM is not part of the first name
    assert table.lines == [2, 4, 6]  # blank line 3; the quoted cell spans lines 4-5
    assert table.data["note"].tolist() == ["plain", "two\r\nlines", "after"]


def test_tsv_and_a_row_with_too_few_cells(tmp_path):
    table = read_table(_write(tmp_path / "t.tsv", "a\tb\n1\t2\n3\n"))
    assert table.data["b"].tolist() == ["2"]
    assert [str(p) for p in table.problems] == ["line 3: 1 cell(s), the header has 2 columns"]


def test_utf16_with_bom_is_read_without_an_encoding(tmp_path):
    path = _write(tmp_path / "t.csv", "x0,y\n1,café\n", "utf-16")
    assert read_table(path).data["y"].tolist() == ["café"]


def test_latin1_is_an_error_naming_file_line_and_the_setting_unless_declared(tmp_path):
    path = _write(tmp_path / "t.csv", "x0,y\n1,ok\n2,caf\xe9\n", "latin-1")
    with pytest.raises(TextEncodingError) as error:
        read_table(path)
    message = str(error.value)
    assert str(path) in message and "line 3" in message and "encoding: latin-1" in message
    assert read_table(path, encoding="latin-1").data["y"].tolist() == ["ok", "café"]
    assert decode_text(path, encoding="latin-1").endswith("café\n")


def test_empty_file_bad_header_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="the file is empty"):
        read_table(_write(tmp_path / "e.csv", ""))
    with pytest.raises(ManifestError, match=r"\['a'\] appear more than once"):
        read_table(_write(tmp_path / "h.csv", "a,a,b\n1,2,3\n"))
    with pytest.raises(ManifestError, match=r"unknown table format '\.xlsx'"):
        read_table(tmp_path / "t.xlsx")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_table(tmp_path / "nope.csv")


def test_feature_matrix_names_row_column_and_value(tmp_path):
    cells = np.array(["1.5", "abc", None, "nan", "-inf"], dtype=object)
    table = Table(tmp_path / "t.csv", ["f"], {"f": cells}, [2, 3, 4, 5, 6])
    x, bad = feature_matrix(table, ["f"])
    assert x[0, 0] == 1.5
    assert bad == {
        1: ["feature 'f': 'abc' is not a number"],
        2: ["feature 'f': empty cell"],
        3: ["feature 'f': nan is not finite (NaN/inf)"],
        4: ["feature 'f': -inf is not finite (NaN/inf)"],
    }


# ---------------------------------------------------------------- Parquet
def test_parquet_columns_nulls_and_row_numbers(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"x0": [0.5, 1.5, 2.5], "y": ["a", None, "b"], "k": [1, None, 2]}), path
    )
    table = read_table(path)
    assert table.unit == "row" and table.lines == [1, 2, 3]
    assert table.data["x0"].dtype == np.float64
    assert table.data["y"].tolist() == ["a", None, "b"]
    assert table.data["k"].tolist() == [1, None, 2]
    assert str(table.problem(1, "bad")) == "row 2: bad"


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    path = _write(tmp_path / "t.parquet", "")
    with pytest.raises(ImportError, match=r'pip install "mtl_lightning\[tabular\]"'):
        read_table(path)


# ---------------------------------------------------------------- NumPy
def test_npz_features_array_and_label_arrays(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(
        path, X=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 0]), s=np.array(["a", "", "b"])
    )
    table = read_table(path)
    assert table.columns == ["x0", "x1", "y", "s"]
    assert table.data["x1"].tolist() == [1.0, 3.0, 5.0]
    assert table.data["s"].tolist() == ["a", None, "b"]
    named = read_table(path, columns=["width", "height"])
    assert named.columns[:2] == ["width", "height"]
    with pytest.raises(ManifestError, match="columns names 1 columns"):
        read_table(path, columns=["w"])


def test_npy_matrix_and_structured_table(tmp_path):
    np.save(tmp_path / "m.npy", np.ones((4, 3)))
    assert read_table(tmp_path / "m.npy").columns == ["x0", "x1", "x2"]
    rows = np.array([(1.0, 2), (3.0, 4)], dtype=[("a", "f8"), ("y", "i8")])
    np.save(tmp_path / "s.npy", rows)
    table = read_table(tmp_path / "s.npy")
    assert table.columns == ["a", "y"] and table.data["y"].tolist() == [2, 4]


def test_npz_with_mismatched_lengths_or_two_matrices_is_an_error(tmp_path):
    np.savez(tmp_path / "a.npz", X=np.ones((3, 2)), y=np.zeros(4))
    with pytest.raises(ManifestError, match=r"different numbers of rows: \{'x0': 3"):
        read_table(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", X=np.ones((3, 2)), Z=np.ones((3, 2)))
    with pytest.raises(ManifestError, match=r"2 2-D arrays \['X', 'Z'\]"):
        read_table(tmp_path / "b.npz")
    np.save(tmp_path / "c.npy", np.ones((2, 2, 2)))
    with pytest.raises(ManifestError, match=r"shape \[2, 2, 2\]"):
        read_table(tmp_path / "c.npy")
    np.save(tmp_path / "d.npy", np.ones(3))  # a .npy column has no name
    with pytest.raises(ManifestError, match=r"array '\(\.npy\)' has shape \[3\]"):
        read_table(tmp_path / "d.npy")


# ---------------------------------------------------------------- label checks
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("happ", "happy", True),  # deletion
        ("Happy ", "happy", True),  # case + whitespace
        ("nuetral", "neutral", True),  # transposition
        ("angry", "angrx", True),  # substitution
        ("happy", "sad", False),
        ("1", "2", False),  # numbers
        ("10.5", "10.6", False),
        ("yes", "yet", False),  # shorter than 4
        ("spk01", "spk02", False),  # only the digits differ
        ("happy", "happy", False),
    ],
)
def test_near_duplicate(a, b, expected):
    assert near_duplicate(a, b) is expected
    assert near_duplicate(b, a) is expected


def test_candidate_pairs_find_every_near_duplicate_a_brute_force_finds():
    rng = random.Random(0)
    names = sorted(
        {"".join(rng.choice("abc ") for _ in range(rng.randint(3, 6))) for _ in range(80)}
    )
    brute = {(a, b) for a, b in itertools.combinations(names, 2) if near_duplicate(a, b)}
    fast = {(a, b) for a, b in _candidate_pairs(names) if near_duplicate(a, b)}
    assert brute and fast == brute


def test_label_problems_name_both_labels_and_their_lines():
    labels = ["neutral", "neutral", "nuetral", "nuetral", "sad", "sad", None]
    messages = label_problems("emotion", labels, [2, 3, 4, 5, 6, 7, 8])
    assert messages == [
        "emotion: labels 'neutral' and 'nuetral' look like one label written two ways: "
        "'neutral' at line(s) 2, 3; 'nuetral' at line(s) 4, 5"
    ]
    assert label_problems("emotion", labels, list(range(7)), near_duplicates=False) == []
    rare = label_problems("e", ["a1", "b2", "b2"], ["row 1", "row 2", "row 3"], min_count=2)
    assert rare == ["e: label 'a1' is seen in 1 row(s) (fewer than min_label_count 2): row 1"]
    assert label_problems("e", ["a1", "b2"], [1, 2], min_count=1) == []


def test_integer_labels_sort_as_numbers_in_every_vocabulary():
    vocab = LabelVocab.build({"grade": ["10", "2", "1", None, "2"], "mixed": ["b", "3", "a"]})
    assert vocab.names == {"grade": ["1", "2", "10"], "mixed": ["3", "a", "b"]}
