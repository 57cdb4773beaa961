"""Lesson 01: minillm.corpus (download, checksum, cache, offline errors, split, baseline)."""
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch

from exercise_tools import assert_checks_work
from minillm import corpus
from minillm.corpus import (TINY_SHAKESPEARE_FILE, TINY_SHAKESPEARE_SHA256, TINY_SHAKESPEARE_URL, CorpusError, bigram_counts,
                            bigram_loss, corpus_path, data_dir, train_val_split)


@pytest.fixture(scope="module")
def real_copy():
    """The verified local copy the suite runs on (MINILLM_DATA or the cache)."""
    return corpus_path(offline=True)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_DATA", str(tmp_path))
    return tmp_path


def no_network(*args, **kwargs):
    raise AssertionError("the network was touched")


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILLM_DATA", str(tmp_path / "here"))
    assert data_dir() == tmp_path / "here"
    monkeypatch.delenv("MINILLM_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "minillm"


def test_download_checks_and_caches(real_copy, empty_cache, monkeypatch):
    path = corpus_path(offline=False, url=real_copy.as_uri())        # a "download" from a local file URL
    assert path == empty_cache / TINY_SHAKESPEARE_FILE
    assert corpus.sha256_of(path) == TINY_SHAKESPEARE_SHA256
    assert [p.name for p in empty_cache.iterdir()] == [TINY_SHAKESPEARE_FILE]   # no temporary file left
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert corpus_path(offline=False) == path                          # the second call only verifies


def test_offline_without_a_copy_says_where_to_put_it(empty_cache):
    with pytest.raises(CorpusError) as e:
        corpus_path(offline=True)
    message = str(e.value)
    assert str(empty_cache / TINY_SHAKESPEARE_FILE) in message and "by hand" in message
    assert TINY_SHAKESPEARE_SHA256 in message and "MINILLM_DATA" in message
    assert TINY_SHAKESPEARE_URL in message                               # the address to download it from by hand


def test_offline_switch_comes_from_the_environment(empty_cache, monkeypatch):
    monkeypatch.setenv("MINILLM_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(CorpusError, match="not available offline"):
        corpus.tiny_shakespeare()


def test_unreachable_server_gives_a_clear_error(empty_cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(CorpusError, match="Could not download Tiny Shakespeare.*no route to host.*by hand"):
        corpus_path(offline=False)
    assert list(empty_cache.iterdir()) == []


def test_a_damaged_copy_is_refused_then_replaced(real_copy, empty_cache):
    damaged = empty_cache / TINY_SHAKESPEARE_FILE
    damaged.write_bytes(real_copy.read_bytes()[:50_000])               # a download cut short
    with pytest.raises(CorpusError, match="damaged or is not Tiny Shakespeare"):
        corpus_path(offline=True)
    assert corpus_path(offline=False, url=real_copy.as_uri()) == damaged
    assert corpus.sha256_of(damaged) == TINY_SHAKESPEARE_SHA256


def test_a_wrong_download_is_not_saved(empty_cache, tmp_path):
    impostor = tmp_path / "page.html"
    impostor.write_text("<html>404 Not Found</html>")
    with pytest.raises(CorpusError, match="SHA-256"):
        corpus_path(offline=False, url=impostor.as_uri())
    assert not (empty_cache / TINY_SHAKESPEARE_FILE).exists()


def test_atomic_write_gives_normal_permissions(tmp_path):
    corpus.atomic_write_bytes(tmp_path / "f.txt", b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "file.txt"
    target.write_bytes(b"old")
    def crash(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        corpus.atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_the_corpus_is_what_we_expect(real_copy):
    text = corpus.tiny_shakespeare(offline=True)
    assert len(text) == 1_115_394 and len(set(text)) == 65 and text.startswith("First Citizen:")


def test_train_val_split():
    assert train_val_split("abcdefghij", 0.2) == ("abcdefgh", "ij")
    train, val = train_val_split(torch.arange(1000), 0.1)
    assert torch.equal(torch.cat([train, val]), torch.arange(1000)) and len(val) == 100
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=f"val_fraction must be between 0 and 1.*{bad}"):
            train_val_split("abcdef", bad)
    with pytest.raises(ValueError, match="one part would be empty"):
        train_val_split("ab", 0.1)


def test_bigram_counts_match_a_loop():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (5000,), generator=g)
    expected = torch.zeros(11, 11, dtype=torch.long)
    for a, b in zip(ids.tolist(), ids[1:].tolist()):
        expected[a, b] += 1
    assert torch.equal(bigram_counts(ids, 11), expected)


def test_bigram_loss_matches_the_formula():
    counts = torch.tensor([[0, 2], [1, 0]])
    # p(1|0) = 3/4, p(0|1) = 2/3 with smoothing 1
    assert bigram_loss(counts, torch.tensor([0, 1, 0]), 1.0) == pytest.approx(-(math.log(3 / 4) + math.log(2 / 3)) / 2)
    assert bigram_loss(torch.zeros(7, 7), torch.tensor([1, 5, 2]), 1.0) == pytest.approx(math.log(7))
    with pytest.raises(ValueError, match="smoothing must be >= 0, got -1"):
        bigram_loss(counts, torch.tensor([0, 1]), -1)


def test_bigram_baseline_on_tiny_shakespeare(real_copy):
    text = corpus.tiny_shakespeare(offline=True)
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    train, val = train_val_split(torch.tensor([stoi[c] for c in text]))
    loss = bigram_loss(bigram_counts(train, 65), val)
    assert 2.45 < loss < 2.52


def test_command_line_data(real_copy, tmp_path):
    env = {**os.environ, "MINILLM_DATA": str(real_copy.parent)}
    ok = subprocess.run([sys.executable, "-m", "minillm", "data", "--offline"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "SHA-256 verified" in ok.stdout
    env["MINILLM_DATA"] = str(tmp_path)
    missing = subprocess.run([sys.executable, "-m", "minillm", "data", "--offline"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "by hand" in missing.stderr and "Traceback" not in missing.stderr


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("01_big_picture", {
        0: "return list(dict.fromkeys(text))",                  # distinct, but in order of appearance
        1: "counts = torch.zeros((vocab_size, vocab_size), dtype=torch.long)\n"
           "for a, b in zip(ids, ids[1:]):\n    counts[b, a] += 1\nreturn counts",   # transposed
        2: "probs = (counts.double() + alpha) / (counts.double() + alpha).sum()\n"     # normalised over the whole table
           "ids = torch.tensor(ids)\nreturn -probs[ids[:-1], ids[1:]].log().mean().item()",
        3: "V = vocab_size\nt = torch.as_tensor(train_ids).long()\n"                  # forgets the smoothing
           "c = torch.bincount((t[:-2] * V + t[1:-1]) * V + t[2:], minlength=V ** 3).view(V, V, V).double()\n"
           "p = c / c.sum(dim=-1, keepdim=True).clamp(min=1)\nv = torch.as_tensor(val_ids).long()\n"
           "return -p[v[:-2], v[1:-1], v[2:]].log().mean().item()",
    })


def test_atomic_write_flushes_the_folder_after_the_rename(tmp_path, monkeypatch):
    """The rename is a change to the folder: the folder is fsynced after it, so that a power
    cut cannot undo the rename (the file's own fsync comes before it)."""
    import stat
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def spy_fsync(fd):
        calls.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def spy_replace(src, dst):
        calls.append("rename")
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    corpus.atomic_write_bytes(tmp_path / "f.bin", b"data")
    assert calls == ["fsync file", "rename", "fsync dir"]
    assert (tmp_path / "f.bin").read_bytes() == b"data"
