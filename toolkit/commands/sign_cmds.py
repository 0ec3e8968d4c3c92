"""`crisis-tool keygen` and `sign`: Ed25519 keys and bundle signatures (`verify --pubkey` checks them).

What a signature protects is described in `crisis_tool.runtime.signing` and the README ("Signed bundles").
"""

from __future__ import annotations

from pathlib import Path

import typer


def verify_report(bundle: Path, pubkey: Path | None) -> str:
    """Verify `bundle` (and its signature with `pubkey`); the line `crisis-tool verify` prints when it is ok."""
    from crisis_tool.runtime.bundle import Bundle
    from crisis_tool.runtime.manifest import MANIFEST_NAME
    from crisis_tool.runtime.signing import SIGNATURE_NAME, key_id, load_public_key, read_signature

    manifest = Bundle.load(bundle, verify=True, pubkey=pubkey).manifest
    line = f"ok: {len(manifest.files)} files match {bundle}/{MANIFEST_NAME}"
    if pubkey is not None:
        return f"{line}, signed by key {key_id(load_public_key(pubkey))[:16]} ({pubkey})"
    if (bundle / SIGNATURE_NAME).exists():
        signer = read_signature(bundle)["key_id"][:16]
        return f"{line}; signed by key {signer}, signature NOT checked (pass --pubkey)"
    return f"{line}; not signed (hashes are self-consistent only, see `crisis-tool sign`)"


def register(app: typer.Typer) -> None:
    """Add `keygen` and `sign` to `app`."""

    @app.command("keygen")
    def keygen(
        out: Path = typer.Option(..., "--out", help="Private key file to write (mode 0600); the public key goes "
                                                    "to <out>.pub. Existing files are never overwritten."),
    ) -> None:
        """Make an Ed25519 key pair for signing bundles."""
        from crisis_tool.runtime.signing import generate_keypair, key_id, load_public_key

        private_path, public_path = generate_keypair(out)
        typer.echo(f"private key: {private_path} (mode 0600, keep it off the deployment machines)")
        typer.echo(f"public key:  {public_path} (key {key_id(load_public_key(public_path))[:16]}; give it to "
                   "`verify`, `predict`, `serve` and `label` as --pubkey)")

    @app.command("sign")
    def sign(
        bundle: Path = typer.Argument(..., help="Bundle directory (verified before it is signed)."),
        key: Path = typer.Option(..., "--key", help="Private key from `crisis-tool keygen`."),
    ) -> None:
        """Sign a verified bundle's manifest: writes <bundle>/manifest.sig (replacing an older signature)."""
        from crisis_tool.runtime.bundle import Bundle
        from crisis_tool.runtime.signing import key_id, load_private_key, sign_manifest

        load_private_key(key)  # a bad key file is one line before the bundle is read
        Bundle.load(bundle, verify=True)  # sign only a bundle that matches its own manifest
        path = sign_manifest(bundle, key)
        typer.echo(f"signed: {path} (key {key_id(load_private_key(key).public_key())[:16]})")
