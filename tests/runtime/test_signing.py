"""Signed bundles: what `manifest.sha256` cannot catch (an attacker who edits labels and recomputes every hash)
a signature does, and `--pubkey` makes verify, predict, serve and label refuse anything but the signed bundle."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import BundleError
from crisis_tool.runtime.manifest import MANIFEST_SIGNATURE_NAME, Manifest

pytest.importorskip("cryptography")


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two key pairs made with `crisis-tool keygen`: the publisher's and an attacker's."""
    from crisis_tool.cli import run

    folder = tmp_path_factory.mktemp("keys")
    assert run(["keygen", "--out", str(folder / "publisher")]) == 0
    assert run(["keygen", "--out", str(folder / "attacker")]) == 0
    return {"private": folder / "publisher", "public": folder / "publisher.pub",
            "attacker": folder / "attacker", "attacker_public": folder / "attacker.pub"}


@pytest.fixture
def signed(tiny_bundle: Path, keys: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the tiny bundle, signed by the publisher."""
    from crisis_tool.cli import run

    root = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    assert run(["sign", str(root), "--key", str(keys["private"])]) == 0
    return root


def _swap_labels(node: Any) -> bool:
    """Reverse every `labels` list in a decoded JSON document, in place; True if one was found."""
    found = False
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "labels" and isinstance(value, list) and len(value) > 1:
                value.reverse()
                found = True
            else:
                found = _swap_labels(value) or found
    elif isinstance(node, list):
        for item in node:
            found = _swap_labels(item) or found
    return found


def tamper_and_rehash(root: Path) -> None:
    """What an attacker does with a text editor and sha256sum: swap the labels in manifest.json and
    model_config.json, put model_config.json's new hash and size in the manifest, recompute manifest.sha256."""
    config_path, manifest_path = root / "model_config.json", root / "manifest.json"
    config = json.loads(config_path.read_text())
    assert _swap_labels(config)
    config_path.write_text(json.dumps(config, indent=2))
    manifest = json.loads(manifest_path.read_text())
    assert _swap_labels(manifest)
    data = config_path.read_bytes()
    manifest["files"]["model_config.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    (root / "manifest.sha256").write_text(hashlib.sha256(canonical.encode("ascii")).hexdigest() + "\n")


def test_untampered_signed_bundle_passes_verify_with_pubkey(signed: Path, keys: dict[str, Path], cli,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert cli(["verify", signed, "--pubkey", keys["public"]]) == 0
    out = capsys.readouterr().out
    assert "ok:" in out and "signed by key" in out
    sig = json.loads((signed / MANIFEST_SIGNATURE_NAME).read_text())
    assert sig["algorithm"] == "ed25519" and len(sig["key_id"]) == 64
    assert MANIFEST_SIGNATURE_NAME not in Manifest.load(signed).files  # written after the file table


def test_tampered_then_rehashed_passes_plain_verify_but_not_the_signature(
        signed: Path, keys: dict[str, Path], cli, capsys: pytest.CaptureFixture[str]) -> None:
    before = Bundle.load(signed).labels
    tamper_and_rehash(signed)
    assert Bundle.load(signed).labels == before[::-1]  # the attack is real: hashes and run config agree
    assert cli(["verify", signed]) == 0  # self-consistent hashes cannot see it ...
    assert "signature NOT checked" in capsys.readouterr().out
    assert cli(["verify", signed, "--pubkey", keys["public"]]) == 1  # ... the signature does
    err = error_lines(capsys)
    assert len(err) == 1 and "bad signature" in err[0] and "changed after it was signed" in err[0]


def test_tampered_and_re_signed_with_another_key_fails(signed: Path, keys: dict[str, Path], cli,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    tamper_and_rehash(signed)
    assert cli(["sign", signed, "--key", keys["attacker"]]) == 0
    assert cli(["verify", signed, "--pubkey", keys["attacker_public"]]) == 0  # valid, but for the wrong key
    capsys.readouterr()
    assert cli(["verify", signed, "--pubkey", keys["public"]]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "signed by key" in err[0] and str(keys["public"]) in err[0]


def test_forged_key_id_with_another_keys_signature_fails(signed: Path, keys: dict[str, Path], cli,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The attacker writes the publisher's key id next to a signature made with their own key."""
    publisher_id = json.loads((signed / MANIFEST_SIGNATURE_NAME).read_text())["key_id"]
    tamper_and_rehash(signed)
    assert cli(["sign", signed, "--key", keys["attacker"]]) == 0
    sig = json.loads((signed / MANIFEST_SIGNATURE_NAME).read_text())
    (signed / MANIFEST_SIGNATURE_NAME).write_text(json.dumps({**sig, "key_id": publisher_id}))
    capsys.readouterr()
    assert cli(["verify", signed, "--pubkey", keys["public"]]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "bad signature" in err[0]


def test_a_signature_does_not_excuse_an_altered_file(signed: Path, keys: dict[str, Path], cli,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Changing a file without touching the manifest keeps the signature valid; the file hash catches it."""
    graph = next(rel for rel in sorted(Manifest.load(signed).files) if rel.endswith(".onnx"))
    with open(signed / graph, "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 1]))
    capsys.readouterr()
    assert cli(["verify", signed, "--pubkey", keys["public"]]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and f"{graph} was altered" in err[0]


def test_unsigned_bundle_with_pubkey_is_refused_by_verify_predict_serve_and_label(
        tiny_bundle: Path, keys: dict[str, Path], cli, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"id": "a", "text": "flood", "image": "none.jpg"}) + "\n")
    out = tmp_path / "out.jsonl"
    commands = {
        "verify": ["verify", tiny_bundle],
        "predict": ["predict", "--bundle", tiny_bundle, "--input", records, "--output", out],
    }
    if importlib.util.find_spec("ray") is not None:  # serve and label check the bundle before Ray starts
        commands["serve"] = ["serve", "--bundle", tiny_bundle, "--port", "18123"]
        commands["label"] = ["label", "--bundle", tiny_bundle, "--input", records, "--output", tmp_path / "labels"]
    capsys.readouterr()
    for name, argv in commands.items():
        assert cli([*argv, "--pubkey", keys["public"]]) == 1, name
        err = error_lines(capsys)
        assert len(err) == 1 and "is not signed" in err[0], (name, err)
    assert not out.exists() and not (tmp_path / "labels" / "in.predictions.jsonl").exists()


def test_predict_with_pubkey_runs_on_the_signed_bundle_and_refuses_it_once_tampered(
        signed: Path, keys: dict[str, Path], cli, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 40, 40)).save(tmp_path / "a.jpg")
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"id": "a", "text": "flood waters rise", "image": "a.jpg"}) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["predict", "--bundle", signed, "--input", records, "--output", out, "--pubkey", keys["public"]]
    assert cli(argv) == 0
    assert json.loads(out.read_text())["id"] == "a"
    tamper_and_rehash(signed)
    out.unlink()
    capsys.readouterr()
    assert cli(argv) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "bad signature" in err[0] and not out.exists()


def test_bundle_load_with_pubkey_verifies_even_when_asked_not_to(signed: Path, keys: dict[str, Path]) -> None:
    bundle = Bundle.load(signed, verify=False, pubkey=keys["public"])
    assert bundle.root == signed
    (signed / "model_config.json").write_text("{}")
    Bundle.load(signed, verify=False)  # no key: the caller chose not to verify
    with pytest.raises(BundleError, match="model_config.json was altered"):
        Bundle.load(signed, verify=False, pubkey=keys["public"])


def test_a_file_the_manifest_does_not_list_fails_verify(signed: Path, keys: dict[str, Path], cli,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (signed / "tokenizer" / "extra_vocab.txt").write_text("injected")
    (signed / "zz_notes.txt").write_text("hello")
    capsys.readouterr()
    assert cli(["verify", signed]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "tokenizer/extra_vocab.txt (and 1 more) is in the bundle but not in the manifest" \
        in err[0]
    with pytest.raises(BundleError, match="not in the manifest"):
        Bundle.load(signed, pubkey=keys["public"])


def test_sign_refuses_a_bundle_that_does_not_match_its_manifest(tiny_bundle: Path, keys: dict[str, Path],
                                                                 tmp_path: Path, cli,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    (root / "model_config.json").write_text("{}")
    capsys.readouterr()
    assert cli(["sign", root, "--key", keys["private"]]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "model_config.json was altered" in err[0]
    assert not (root / MANIFEST_SIGNATURE_NAME).exists()


def test_keygen_writes_a_0600_private_key_and_never_overwrites(tmp_path: Path, cli,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k"
    assert cli(["keygen", "--out", key]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = key.read_bytes(), (tmp_path / "k.pub").read_bytes()
    capsys.readouterr()
    assert cli(["keygen", "--out", key]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "refusing to overwrite" in err[0]
    assert (key.read_bytes(), (tmp_path / "k.pub").read_bytes()) == before
    (tmp_path / "only.pub").write_text("someone's public key")
    assert cli(["keygen", "--out", tmp_path / "only"]) == 2  # the .pub alone exists: refused too
    assert not (tmp_path / "only").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub", "only.pub"]  # no temporary left


@pytest.mark.parametrize(("flag", "content", "message"), [
    ("--pubkey", "not a key", "not a PEM public key"),
    ("--pubkey", None, "cannot read the public key"),
    ("--pubkey", "private", "not a PEM public key"),
])
def test_bad_key_files_are_one_line(signed: Path, keys: dict[str, Path], tmp_path: Path, cli,
                                    capsys: pytest.CaptureFixture[str], flag: str, content: str | None,
                                    message: str) -> None:
    path = tmp_path / "key.pub"
    if content == "private":
        shutil.copyfile(keys["private"], path)
    elif content is not None:
        path.write_text(content)
    capsys.readouterr()
    assert cli(["verify", signed, flag, path]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and message in err[0]


def test_a_stale_or_malformed_signature_is_one_line(signed: Path, keys: dict[str, Path], cli,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    sig = signed / MANIFEST_SIGNATURE_NAME
    sig.write_text("{not json")
    capsys.readouterr()
    assert cli(["verify", signed, "--pubkey", keys["public"]]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "unreadable signature" in err[0]
    sig.write_text(json.dumps({"format": "x"}))
    assert cli(["verify", signed, "--pubkey", keys["public"]]) == 1
    assert "malformed signature" in error_lines(capsys)[0]
