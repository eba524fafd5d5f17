"""The ``fusesnap`` command line: parse, call the library, print.

Errors are one line on stderr and a non-zero exit; ``-v`` adds the traceback
and debug logs.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from fusesnap import __version__
from fusesnap.errors import FusesnapError
from fusesnap.lazy import open_registry_client
from fusesnap.lazy.pull import pull as pull_image
from fusesnap.oci import Platform, parse_manifest
from fusesnap.reference import Reference
from fusesnap.store import Store, collect_garbage, default_root, open_store
from fusesnap.termui import ProgressLine, human_size, table

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_INTERNAL = 2
EXIT_INTERRUPTED = 130


@dataclass
class Context:
    root: Path
    verbose: bool
    insecure_registries: tuple[str, ...] = ()
    ca_file: str | None = None
    _store: Store | None = field(default=None, repr=False)

    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.root)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


pass_ctx = click.make_pass_decorator(Context)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FUSESNAP_ROOT",
    default=None,
    help="Store directory (default: /var/lib/fusesnap as root, else $XDG_DATA_HOME/fusesnap).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logs and tracebacks.")
@click.option(
    "--insecure-registry",
    "insecure",
    multiple=True,
    metavar="HOST",
    help="Talk to HOST without TLS verification (loopback hosts always use plain HTTP).",
)
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True), help="Extra CA bundle.")
@click.version_option(__version__, prog_name="fusesnap")
@click.pass_context
def cli(
    ctx: click.Context,
    root: Path | None,
    verbose: bool,
    insecure: tuple[str, ...],
    ca_file: str | None,
) -> None:
    """Mount OCI/Docker images straight from a registry, lazily."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not verbose:
        # httpx logs every request at INFO; keep terminals quiet unless asked.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    obj = Context(
        root=root or default_root(), verbose=verbose, insecure_registries=insecure, ca_file=ca_file
    )
    ctx.obj = obj
    ctx.call_on_close(obj.close)


@cli.command()
@click.argument("ref")
@click.option(
    "--platform", "platform_text", metavar="OS/ARCH[/VARIANT]", help="Default: this host's."
)
@pass_ctx
def pull(c: Context, ref: str, platform_text: str | None) -> None:
    """Pull REF's manifest, config and layers into the store."""
    reference = Reference.parse(ref)
    plat = Platform.parse(platform_text) if platform_text else None
    store = c.store()
    progress = ProgressLine(f"pulling {reference}", unit="layers")
    started = time.monotonic()

    async def main() -> Any:
        async with open_registry_client(
            insecure_registries=c.insecure_registries, ca_file=c.ca_file
        ) as client:
            return await pull_image(store, client, reference, platform=plat, progress=progress)

    try:
        result = _run(main)
    finally:
        progress.clear()
    elapsed = time.monotonic() - started
    click.echo(
        f"{result.name}: {result.manifest.digest} ({result.platform}), "
        f"{len(result.layers)} layers, fetched {human_size(result.fetched_bytes)} "
        f"in {elapsed:.1f}s"
    )


def _image_size(store: Store, manifest_digest: Any) -> int:
    try:
        doc = parse_manifest(store.content.read(manifest_digest))
    except FusesnapError:
        return 0
    return sum(d.size for d in doc.children())


@cli.group(invoke_without_command=True)
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
@click.pass_context
def images(ctx: click.Context, quiet: bool) -> None:
    """List images (same as ``images ls``)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(images_ls, quiet=quiet)


@images.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
@pass_ctx
def images_ls(c: Context, quiet: bool = False) -> None:
    """List images in the store."""
    store = c.store()
    records = sorted(store.images.list(), key=lambda r: r.name)
    if quiet:
        for r in records:
            click.echo(r.name)
        return
    rows = [
        [
            r.name,
            r.manifest_digest.short,
            r.platform,
            human_size(_image_size(store, r.manifest_digest)),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated)),
        ]
        for r in records
    ]
    click.echo(table(rows, ["REF", "MANIFEST", "PLATFORM", "SIZE", "PULLED"]))


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@pass_ctx
def rmi(c: Context, refs: tuple[str, ...]) -> None:
    """Remove image names (content is freed by ``gc``)."""
    store = c.store()
    for ref in refs:
        name = str(Reference.parse(ref))
        store.images.delete(name)
        click.echo(f"removed {name}")


@cli.group()
def content() -> None:
    """Inspect the content store."""


@content.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Digests only.")
@pass_ctx
def content_ls(c: Context, quiet: bool) -> None:
    """List blobs in the content store."""
    infos = sorted(c.store().content.list(), key=lambda i: i.digest)
    if quiet:
        for i in infos:
            click.echo(i.digest)
        return
    rows = [[str(i.digest), human_size(i.size), i.media_type] for i in infos]
    click.echo(table(rows, ["DIGEST", "SIZE", "MEDIA TYPE"]))


@content.command("rm")
@click.argument("digests", nargs=-1, required=True)
@pass_ctx
def content_rm(c: Context, digests: tuple[str, ...]) -> None:
    """Delete blobs by digest (images that need them become unusable until pulled again)."""
    from fusesnap.digest import Digest

    store = c.store()
    for d in digests:
        store.content.delete(Digest(d))
        click.echo(f"removed {d}")


@cli.group()
def lease() -> None:
    """Inspect leases (holds that keep content from gc while work is in flight)."""


@lease.command("ls")
@pass_ctx
def lease_ls(c: Context) -> None:
    """List leases."""
    store = c.store()
    now = time.time()
    rows = []
    for le in sorted(store.leases.list(), key=lambda x: x.created):
        state = "live" if store.leases.is_live(le, now) else "dead"
        expires = "never" if le.expires is None else f"{max(le.expires - now, 0):.0f}s"
        labels = ",".join(f"{k}={v}" for k, v in sorted(le.labels.items()))
        owner = str(le.owner_pid) if le.owner_pid else "-"
        rows.append([le.id, state, owner, expires, str(len(le.resources)), labels])
    click.echo(table(rows, ["ID", "STATE", "OWNER", "EXPIRES", "RESOURCES", "LABELS"]))


@lease.command("rm")
@click.argument("ids", nargs=-1, required=True)
@pass_ctx
def lease_rm(c: Context, ids: tuple[str, ...]) -> None:
    """Delete leases."""
    store = c.store()
    for lid in ids:
        store.leases.delete(lid)
        click.echo(f"removed lease {lid}")


@cli.command()
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be removed.")
@pass_ctx
def gc(c: Context, dry_run: bool) -> None:
    """Remove content that no image or live lease references."""
    result = collect_garbage(c.store(), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for item in result.removed_content:
        click.echo(f"{verb} {item.digest}  {human_size(item.size)}  {item.media_type}")
    for layer in result.removed_layers:
        click.echo(f"{verb} layer {layer.digest}  {layer.chunk_count} chunks")
    for le in result.removed_leases:
        click.echo(f"{verb} lease {le.id}")
    for ing in result.removed_ingests:
        click.echo(f"{verb} partial download {ing.digest}  {human_size(ing.offset)}")
    if result.chunks_skipped:
        click.echo(f"kept every chunk: {result.chunks_skipped}")
    click.echo(
        f"gc: {verb} {len(result.removed_content)} blobs, {len(result.removed_layers)} layers, "
        f"{result.removed_chunks.count} chunks ({human_size(result.bytes_freed)}), "
        f"{len(result.removed_leases)} leases, {len(result.removed_ingests)} partial downloads"
    )


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups from trio nurseries."""
    while isinstance(exc, BaseExceptionGroup):
        errors = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        exc = (errors or list(exc.exceptions))[0]
    return exc


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turn errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        try:
            cli.main(args=args, prog_name="fusesnap", standalone_mode=False)
        except BaseExceptionGroup as group:
            raise _leaf(group) from group
    except click.exceptions.Abort:
        click.echo("fusesnap: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("fusesnap: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except FusesnapError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"fusesnap: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        click.echo(
            f"fusesnap: internal error: {type(exc).__name__}: {exc} (rerun with -v)", err=True
        )
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
