"""``edgemm keygen``, ``edgemm pack`` and ``edgemm install``: signed bundles onto devices."""

from __future__ import annotations

from pathlib import Path

import click

from edgemm.cli import emit_json, json_option


@click.command("keygen")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False, writable=True), required=True,
              help="Directory for edgemm-signing.key (private, 0600) and edgemm-signing.pub.")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
@json_option
def keygen(out_dir: Path, force: bool, as_json: bool) -> None:
    """Create an Ed25519 key pair for signing bundle archives.

    Keep the private key on the build machine; copy the .pub file to each device as its trusted key.
    """
    from edgemm.deploy.keys import generate_keypair

    private, public = out_dir / "edgemm-signing.key", out_dir / "edgemm-signing.pub"
    fp = generate_keypair(private, public, force=force)
    if as_json:
        emit_json({"ok": True, "private_key": str(private), "public_key": str(public), "fingerprint": fp})
    else:
        click.echo(f"private key  {private}  (keep it secret)\npublic key   {public}  (trusted key for devices)\n"
                   f"fingerprint  {fp}")


@click.command("pack")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The .edgemm archive to write.")
@click.option("--key", type=click.Path(path_type=Path), required=True, help="Ed25519 private key (edgemm keygen).")
@click.option("--version", "version", required=True, help="Release number, e.g. 3 or 2.1.0 (devices refuse downgrades).")
@click.option("--force", is_flag=True, help="Replace an existing archive.")
@json_option
def pack(bundle: Path, output: Path, key: Path, version: str, force: bool, as_json: bool) -> None:
    """Verify BUNDLE and pack it into one signed .edgemm archive."""
    from edgemm.deploy.archive import pack as pack_archive

    statement = pack_archive(bundle, output, key=key, version=version, force=force)
    if as_json:
        emit_json({"ok": True, "archive": str(output), **statement.to_dict()})
    else:
        click.echo(f"packed {statement.name} {statement.version}: {len(statement.files)} files, "
                   f"{statement.total_bytes / 2**20:.1f} MiB → {output}")


@click.command("install")
@click.argument("archive", required=False, type=click.Path(path_type=Path))
@click.option("--store", type=click.Path(path_type=Path), required=True, help="The device store directory.")
@click.option("--trusted-key", type=click.Path(path_type=Path), help="The device's trusted Ed25519 public key.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the canary runs (the device the server will use).")
@click.option("--rollback", is_flag=True, help="Instead of installing, re-activate the previous bundle.")
@json_option
def install(archive: Path | None, store: Path, trusted_key: Path | None, device: str, rollback: bool,
            as_json: bool) -> None:
    """Install a signed ARCHIVE into a device store and activate it atomically.

    The signature is checked against --trusted-key before anything is extracted; older or equal
    versions are refused; the new bundle must pass its known-answer canary before it becomes
    active. A running `edgemm serve --store` picks it up without dropping requests.
    """
    from edgemm.deploy.store import DeviceStore
    from edgemm.errors import UsageError

    target = DeviceStore(store)
    if rollback:
        result = target.rollback()
    else:
        if archive is None or trusted_key is None:
            raise UsageError("install needs an ARCHIVE and --trusted-key.",
                             hint="edgemm install bundle.edgemm --store DIR --trusted-key edgemm-signing.pub")
        result = target.install(archive, trusted_key, device=device)
    if as_json:
        emit_json({"ok": True, **result})
    elif rollback:
        click.echo(f"active {result['active']} (rolled back from {result['previous']})")
    else:
        click.echo(f"installed {result['name']} {result['installed']} (previous: {result['previous']}); "
                   f"canary {'passed' if result['canary'].get('passed') else 'skipped'}")
