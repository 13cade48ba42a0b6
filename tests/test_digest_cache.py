"""Inputs' sha256 remembered between runs: hashed once per version of a file, never stale."""

from __future__ import annotations

import hashlib
import json
import os

from zlora_desktop.core import digest_cache, merge as merge_module
from zlora_desktop.core.merge import input_digest, merge
from zlora_desktop.core.paths import user_data_dir
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample


def _count_hashing(monkeypatch) -> list[str]:
    hashed: list[str] = []
    real = merge_module.sha256_file

    def counting(path, *args, **kwargs):
        hashed.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(merge_module, "sha256_file", counting)
    return hashed


def test_a_second_merge_of_the_same_files_hashes_nothing_and_records_the_same_digests(tmp_path, monkeypatch):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_sample(a, SampleSpec(rank=2, layers=2, seed=1))
    write_sample(b, SampleSpec(rank=2, layers=2, seed=2))
    hashed = _count_hashing(monkeypatch)
    recipe = Recipe([RecipeInput(str(a), 1.0), RecipeInput(str(b), 0.5)], str(tmp_path / "out.safetensors"))
    first = merge(recipe)
    assert sorted(hashed) == ["a.safetensors", "b.safetensors"]
    second = merge(recipe)
    assert sorted(hashed) == ["a.safetensors", "b.safetensors"]  # nothing hashed again
    assert second.input_digests == first.input_digests
    assert first.input_digests[str(a)][2] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert os.path.isfile(user_data_dir() / digest_cache.FILE_NAME)


def test_a_file_rewritten_is_hashed_again_even_with_its_old_size_and_mtime(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=2, seed=1))
    hashed = _count_hashing(monkeypatch)
    before = input_digest(str(path))
    old = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # and the old mtime, as some tools restore it
    after = input_digest(str(path))
    assert len(hashed) == 2 and after[2] != before[2]
    assert after[2] == hashlib.sha256(bytes(data)).hexdigest()


def test_a_damaged_cache_file_is_started_afresh(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=2, seed=1))
    cache = user_data_dir() / digest_cache.FILE_NAME
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("{not json")
    monkeypatch.setattr(digest_cache, "_loaded", None)
    digest = input_digest(str(path))[2]
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(json.loads(cache.read_text())) == [str(path)]
