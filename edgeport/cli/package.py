"""``edgeport package``."""

from __future__ import annotations

import click

from .. import vocabulary as v
from . import main
from .common import options_given


@main.command("package")
@click.argument("artifact", type=click.Path())
@click.option("--format", "format_", type=click.Choice(v.PACKAGE_FORMATS), required=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="bundle: a .tar.gz file; triton: the model repository folder; kserve: a folder of manifests.")
@click.option("--target", type=click.Choice(["portable", "ort-mobile"]), default="portable", show_default=True,
              help="bundle: add ONNX Runtime's mobile format (.ort) and the reduced-build operator list.")
@click.option("--name", help="triton, kserve: the model's name (default: the artifact folder's).")
@click.option("--max-batch", type=int, default=v.DEFAULT_MAX_BATCH, show_default=True, help="triton: max_batch_size.")
@click.option("--max-delay-us", type=int, default=v.DEFAULT_TRITON_DELAY_US, show_default=True,
              help="triton: dynamic batching delay.")
@click.option("--instances", type=int, default=1, show_default=True, help="triton: instance_group count.")
@click.option("--instance-kind", type=click.Choice(["KIND_CPU", "KIND_GPU"]), default="KIND_CPU", show_default=True)
@click.option("--with-tokenizer", is_flag=True, help="triton: add a tokenizer (Python backend) and a text ensemble.")
@click.option("--sign", "sign", type=click.Path(), metavar="PRIVATE_KEY",
              help="bundle: sign it with this PEM elliptic-curve key (model-signing; the signing extra).")
@click.option("--namespace", default="default", show_default=True, help="kserve: the Kubernetes namespace.")
@click.option("--storage-uri", help="kserve: where the output folder will be uploaded (s3://, gs://, pvc://...).")
@click.option("--image", help="kserve: an image with edgeport installed (default: installed when the pod starts).")
@click.option("--cpu", default="1", show_default=True, help="kserve: CPU request and limit per replica.")
@click.option("--memory", default="2Gi", show_default=True, help="kserve: memory request and limit per replica.")
@click.option("--min-replicas", type=int, default=1, show_default=True, help="kserve: fewest replicas.")
@click.option("--max-replicas", type=int, default=1, show_default=True, help="kserve: most replicas (autoscaling).")
@click.option("--auth-secret", help="kserve: the Secret whose key 'token' is the predictor's bearer token.")
@click.option("--force", is_flag=True, help="Replace an existing bundle, repository or folder made by edgeport.")
def package_command(artifact, format_, out, target, name, max_batch, max_delay_us, instances, instance_kind,
                    with_tokenizer, sign, namespace, storage_uri, image, cpu, memory, min_replicas, max_replicas,
                    auth_secret, force):
    """Package ARTIFACT as an edge bundle, a Triton model repository, or KServe manifests."""
    from ..package import KServeOptions, PackageOptions, TritonOptions, package
    from ..package.bundle import bundle_sha256

    _refuse_options_of_other_formats(click.get_current_context(), format_)

    triton = TritonOptions(name, max_batch, max_delay_us, instances, instance_kind, with_tokenizer)
    kserve = KServeOptions(name, namespace, storage_uri, image, cpu, memory, min_replicas, max_replicas, auth_secret)
    path = package(artifact, out, PackageOptions(format_, target, triton, kserve, force, sign))
    if format_ == "bundle":
        click.echo(f"wrote {path} (sha256 {bundle_sha256(path)})")
    else:
        click.echo(f"wrote {path}")


# The options each format reads; one given to another format would be silently ignored.
FORMAT_OPTIONS = {
    "bundle": ("--target", "--sign"),
    "triton": ("--name", "--max-batch", "--max-delay-us", "--instances", "--instance-kind", "--with-tokenizer"),
    "kserve": ("--name", "--namespace", "--storage-uri", "--image", "--cpu", "--memory", "--min-replicas",
               "--max-replicas", "--auth-secret"),
}


def _refuse_options_of_other_formats(ctx: click.Context, format_: str) -> None:
    from ..errors import InvalidOptionError

    ignored = sorted(options_given(ctx) - {"--format", "--output", "--force", *FORMAT_OPTIONS[format_]})
    if ignored:
        owners = sorted({f for f, names in FORMAT_OPTIONS.items() for name in ignored if name in names})
        raise InvalidOptionError(f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} for --format "
                                 f"{' or '.join(owners)}, not {format_}; drop {'it' if len(ignored) == 1 else 'them'}")
