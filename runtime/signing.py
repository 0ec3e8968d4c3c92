"""Signed bundles: an Ed25519 signature over the bundle's canonical manifest, in `manifest.sig`.

`manifest.sha256` only proves that the manifest agrees with itself: whoever can edit a bundle can edit a label
and recompute every hash. A signature ties the manifest to a key that an attacker does not hold. What is
signed is the message `crisis-tool bundle manifest v1\\n<hex sha256 of the canonical manifest JSON>` (sorted
keys, compact separators, ASCII: `manifest.canonical_digest`), recomputed from `manifest.json` when checked,
never read from `manifest.sha256`. The manifest lists the sha256 and size of every other bundle file, so a
valid signature plus `Manifest.verify` covers every listed file; `verify` refuses files the manifest does not
list. `manifest.sig` itself is JSON (format, algorithm, key id = sha256 of the raw 32-byte public key, the
signed digest, the base64 signature) and is outside the manifest's file table (it is written after it).

Keys are PEM files: the private key PKCS#8 (written mode 0600, unencrypted: protect the file), the public key
SubjectPublicKeyInfo (`K.pub`). Needs the `cryptography` package, imported only when signing or checking.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from crisis_tool.runtime.atomic_files import atomic_write_text
from crisis_tool.runtime.errors import BundleError, MissingDependencyError, UsageError
from crisis_tool.runtime.file_guard import read_capped
from crisis_tool.runtime.manifest import MANIFEST_SIGNATURE_NAME, canonical_digest, read_manifest_json

SIGNATURE_NAME = MANIFEST_SIGNATURE_NAME
SIGNATURE_FORMAT = "crisis-tool-signature/1"
ALGORITHM = "ed25519"
MESSAGE_PREFIX = b"crisis-tool bundle manifest v1\n"
MAX_KEY_BYTES = 16 << 10


def _crypto() -> Any:
    """The `cryptography` Ed25519 module, or MissingDependencyError with the install line."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingDependencyError("signed bundles need the `cryptography` package (pip install cryptography)") \
            from None
    return ed25519


def signed_message(manifest_digest: str) -> bytes:
    """The bytes a bundle signature covers, for the hex sha256 of its canonical manifest."""
    return MESSAGE_PREFIX + manifest_digest.encode("ascii")


def key_id(public_key: Any) -> str:
    """sha256 (hex) of the raw 32-byte Ed25519 public key: names a key in messages and in `manifest.sig`."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


# --------------------------------------------------------------------------- keys
def generate_keypair(out: str | Path) -> tuple[Path, Path]:
    """Write a new private key to `out` (mode 0600) and its public key to `out.pub`; never overwrites a file."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    private_path, public_path = Path(out), Path(f"{out}.pub")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path} exists; refusing to overwrite a key (choose another --out)")
    if not private_path.parent.is_dir():
        raise UsageError(f"folder {private_path.parent} does not exist")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a new file `path` with `mode`, atomically; UsageError when `path` appeared meanwhile."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600 from the start
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        try:
            os.link(tmp, path)  # fails if `path` exists: no overwrite, even in a race
        except FileExistsError:
            raise UsageError(f"{path} exists; refusing to overwrite a key (choose another --out)") from None
    finally:
        os.unlink(tmp)


def load_private_key(path: str | Path) -> Any:
    """An Ed25519 private key from a PEM file; UsageError (one line) when missing or not such a key."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: not an unencrypted PEM private key ({str(exc).splitlines()[0]})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 private key (make one with `crisis-tool keygen`)")
    return key


def load_public_key(path: str | Path) -> Any:
    """An Ed25519 public key from a PEM file; UsageError (one line) when missing or not such a key."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    data = _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: not a PEM public key ({str(exc).splitlines()[0]})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UsageError(f"{path}: not an Ed25519 public key (the .pub file `crisis-tool keygen` wrote)")
    return key


def _read_key_file(path: str | Path, what: str) -> bytes:
    try:
        return read_capped(path, MAX_KEY_BYTES)
    except Exception as exc:  # noqa: BLE001 - UnsafeFileError: missing, FIFO, too large: one line
        raise UsageError(f"cannot read the {what} {exc}") from None


# --------------------------------------------------------------------------- signing and checking
def sign_manifest(root: str | Path, private_key_path: str | Path) -> Path:
    """Write `manifest.sig` atomically over the bundle's canonical manifest as it is now.

    Sign only a bundle that was just verified (`Bundle.load(root, verify=True)`, as `crisis-tool sign` does):
    signing a bundle that does not match its own manifest proves nothing.
    """
    root = Path(root)
    key = load_private_key(private_key_path)
    digest = canonical_digest(read_manifest_json(root))
    signature = key.sign(signed_message(digest))
    record = {"format": SIGNATURE_FORMAT, "algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
              "manifest_sha256": digest, "signature": base64.b64encode(signature).decode("ascii")}
    return atomic_write_text(root / SIGNATURE_NAME, json.dumps(record, indent=2) + "\n")


def read_signature(root: str | Path) -> dict[str, str]:
    """The parsed `manifest.sig` of `root`; BundleError (one line) when absent or malformed."""
    path = Path(root) / SIGNATURE_NAME
    if not path.exists():
        raise BundleError(f"{root}: bundle is not signed (no {SIGNATURE_NAME}); sign it with `crisis-tool sign`")
    try:
        record = json.loads(read_capped(path, MAX_KEY_BYTES).decode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - not JSON, not UTF-8, a FIFO, too large: one line
        raise BundleError(f"{path}: unreadable signature ({exc})") from None
    fields = ("format", "algorithm", "key_id", "manifest_sha256", "signature")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in fields):
        raise BundleError(f"{path}: malformed signature (needs string fields {', '.join(fields)})")
    if record["format"] != SIGNATURE_FORMAT or record["algorithm"] != ALGORITHM:
        raise BundleError(f"{path}: unsupported signature {record['format']} / {record['algorithm']} "
                          f"(expected {SIGNATURE_FORMAT} / {ALGORITHM})")
    return record


def verify_signature(root: str | Path, pubkey_path: str | Path) -> str:
    """BundleError (one line) unless `manifest.sig` is a valid signature by `pubkey_path`'s key over the
    bundle's canonical manifest as it is now; returns the key id. Checks the signature only: the files are
    checked against the manifest by `Manifest.verify`."""
    public_key = load_public_key(pubkey_path)
    from cryptography.exceptions import InvalidSignature

    record = read_signature(root)
    expected_id = key_id(public_key)
    if record["key_id"] != expected_id:
        raise BundleError(f"{root}: signed by key {record['key_id'][:16]}, not by {pubkey_path} "
                          f"(key {expected_id[:16]})")
    try:
        actual = canonical_digest(read_manifest_json(root))
    except ValueError:
        raise BundleError(f"{root}: {SIGNATURE_NAME} does not match the manifest (not canonical JSON)") from None
    try:
        signature = base64.b64decode(record["signature"], validate=True)
        public_key.verify(signature, signed_message(actual))
    except (InvalidSignature, ValueError):
        raise BundleError(f"{root}: bad signature: {MANIFEST_OR_SIG_CHANGED}") from None
    return expected_id


MANIFEST_OR_SIG_CHANGED = (f"manifest.json changed after it was signed, or {SIGNATURE_NAME} was altered "
                           "(re-sign a bundle you changed on purpose)")


__all__ = ["SIGNATURE_NAME", "generate_keypair", "key_id", "load_private_key", "load_public_key",
           "read_signature", "sign_manifest", "signed_message", "verify_signature"]
