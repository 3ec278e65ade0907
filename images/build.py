#!/usr/bin/env python3
"""Builds AIOS's container images offline, where no image registry is reachable.

Each image's Dockerfile (images/<name>/Dockerfile) is the one source of what the image
is. A registry-connected build runs it as it is (`docker build -f ...`). Here, with no
registry, this script assembles the same runtime stage: the binary cargo built on this
machine, a base made from Debian's packages with debootstrap (the Debian release the
Dockerfile's base images are built from), and the metadata the Dockerfile's runtime
stage declares (USER, ENTRYPOINT, ENV, EXPOSE, LABEL, WORKDIR, VOLUME) applied with
umoci. The result is an OCI image archive, cached under ~/.cache/aios/images keyed by
the hash of every input, and printed on stdout (one path per image).

  images/build.py                      # every image, from the debug binaries
  images/build.py --profile release    # from `cargo build --release` binaries
  images/build.py aios-agent           # one image

Base images it knows (the names the Dockerfiles' RUNTIME_IMAGE defaults use):
  gcr.io/distroless/cc-debian12:nonroot   the C runtime the binary links, CA
                                          certificates, /etc/passwd with nonroot
                                          (65532) and a /tmp; no shell
  docker.io/library/debian:bookworm-slim  a minimal Debian, with the packages the
                                          runtime stage's `apt-get install` names and
                                          the user its `useradd` makes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
SUITE = "bookworm"
DISTROLESS_CC = "gcr.io/distroless/cc-debian12:nonroot"
DEBIAN_SLIM = "docker.io/library/debian:bookworm-slim"
NONROOT = 65532


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def die(message: str) -> None:
    log(message)
    sys.exit(1)


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, check=True, **kwargs)
    except FileNotFoundError:
        die(f"{args[0]} is not installed (apt-get install {args[0]})")
    except subprocess.CalledProcessError as err:
        die(f"`{shlex.join(args)}` failed with exit status {err.returncode}")
    raise AssertionError("unreachable")


@dataclass
class Stage:
    """The runtime stage of a Dockerfile: what the image is made of and declares."""

    base: str
    packages: list[str] = field(default_factory=list)
    copies: list[tuple[str, str]] = field(default_factory=list)
    user: str | None = None
    entrypoint: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    expose: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    volumes: list[str] = field(default_factory=list)


def logical_lines(text: str) -> list[str]:
    """Dockerfile lines with continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def key_values(text: str) -> dict[str, str]:
    """`K=V K2="v 2"` as a dict (ENV and LABEL)."""
    pairs = {}
    for word in shlex.split(text):
        if "=" not in word:
            die(f"unsupported instruction argument {word!r}: use KEY=VALUE")
        key, value = word.split("=", 1)
        pairs[key] = value
    return pairs


def parse_dockerfile(path: Path) -> Stage:
    """The last (runtime) stage of a Dockerfile, with ARG defaults substituted in FROM."""
    lines = logical_lines(path.read_text())
    froms = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    if not froms:
        die(f"{path}: no FROM")
    args: dict[str, str] = {}
    for line in lines[: froms[0]]:
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "ARG":
            name, _, default = rest.strip().partition("=")
            args[name] = default
    base = lines[froms[-1]].split()[1]
    stage = Stage(base=re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), base))
    for line in lines[froms[-1] + 1 :]:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        rest = rest.strip()
        if instruction == "RUN":
            for match in re.finditer(r"apt-get install ((?:-\S+\s+)*)([^&|;]+)", rest):
                stage.packages += match.group(2).split()
        elif instruction == "COPY":
            words = rest.split()
            if not words[0].startswith("--from="):
                die(f"{path}: only COPY --from=<build stage> is supported here: {line}")
            stage.copies.append((words[1], words[2]))
        elif instruction == "USER":
            stage.user = rest
        elif instruction == "ENTRYPOINT":
            stage.entrypoint = json.loads(rest)
        elif instruction == "ENV":
            stage.env.update(key_values(rest))
        elif instruction == "EXPOSE":
            stage.expose += [p if "/" in p else f"{p}/tcp" for p in rest.split()]
        elif instruction == "LABEL":
            stage.labels.update(key_values(rest))
        elif instruction == "WORKDIR":
            stage.workdir = rest
        elif instruction == "VOLUME":
            stage.volumes += json.loads(rest) if rest.startswith("[") else rest.split()
        else:
            die(f"{path}: instruction {instruction} is not supported by the offline build")
    return stage


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (its sources), so nothing is named here."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[1]:
                return words[1]
    die("no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list")
    raise AssertionError("unreachable")


def debian_rootfs(cache: Path, packages: list[str]) -> Path:
    """A minimal Debian root file system with `packages`, made once and kept as a tar."""
    wanted = sorted(set(packages) | {"ca-certificates"})
    key = hashlib.sha256(f"{SUITE} minbase {' '.join(wanted)}".encode()).hexdigest()[:12]
    tarball = cache / f"debian-{SUITE}-minbase-{key}.tar"
    if not tarball.exists():
        if not shutil.which("debootstrap"):
            die("debootstrap is not installed (apt-get install debootstrap)")
        log(f"making a Debian {SUITE} base with {', '.join(wanted)} (debootstrap, about 2 minutes)")
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            root = Path(scratch) / "rootfs"
            run(
                "debootstrap", "--variant=minbase", f"--include={','.join(wanted)}",
                SUITE, str(root), debian_mirror(),
                stdout=subprocess.DEVNULL,
            )
            # What an image does not need: package lists, caches, documentation.
            for junk in ["var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                         "usr/share/info", "usr/share/locale", "var/log"]:
                shutil.rmtree(root / junk, ignore_errors=True)
                (root / junk).mkdir(parents=True, exist_ok=True)
            partial = tarball.with_suffix(".partial")
            run("tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), ".")
            partial.rename(tarball)
    return tarball


def add_nonroot(root: Path, home: str) -> None:
    """The nonroot user (65532) in /etc/passwd and /etc/group, as distroless has it."""
    passwd, group = root / "etc/passwd", root / "etc/group"
    if f":{NONROOT}:" not in passwd.read_text():
        with passwd.open("a") as f:
            f.write(f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:{home}:/usr/sbin/nologin\n")
    if f":{NONROOT}:" not in group.read_text():
        with group.open("a") as f:
            f.write(f"nonroot:x:{NONROOT}:\n")


def shared_libraries(binary: Path) -> list[str]:
    """The shared objects `binary` loads, as absolute paths (from ldd)."""
    out = run("ldd", str(binary), capture_output=True, text=True).stdout
    libraries = []
    for line in out.splitlines():
        words = line.split()
        if "=>" in words and len(words) >= 3 and words[2].startswith("/"):
            libraries.append(words[2])
        elif words and words[0].startswith("/"):
            libraries.append(words[0])
    return libraries


def assemble_rootfs(stage: Stage, debian: Path, binaries: dict[str, Path], root: Path) -> None:
    """The image's file system: the base the Dockerfile names, then its COPYs."""
    root.mkdir(parents=True)
    if stage.base == DEBIAN_SLIM:
        run("tar", "-C", str(root), "--numeric-owner", "-xf", str(debian))
        add_nonroot(root, stage.env.get("HOME", "/home/nonroot"))
    elif stage.base == DISTROLESS_CC:
        with tempfile.TemporaryDirectory(dir=root.parent) as scratch:
            full = Path(scratch)
            run("tar", "-C", str(full), "--numeric-owner", "-xf", str(debian))
            keep = ["etc/ssl/certs/ca-certificates.crt", "etc/passwd", "etc/group",
                    "etc/nsswitch.conf", "usr/share/zoneinfo/UTC"]
            for binary in binaries.values():
                keep += [lib.lstrip("/") for lib in shared_libraries(binary)]
            for relative in keep:
                source = full / relative
                # Libraries are symbolic links to versioned files: copy what they name.
                resolved = source.resolve()
                if not resolved.is_relative_to(full.resolve()):
                    resolved = full / os.path.relpath(resolved, "/")
                if not resolved.exists():
                    die(f"the base lacks {relative}")
                target = root / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(resolved, target)
            # /etc/passwd of the base holds system users; distroless has root and nonroot.
            (root / "etc/passwd").write_text("root:x:0:0:root:/root:/sbin/nologin\n")
            (root / "etc/group").write_text("root:x:0:\n")
            add_nonroot(root, "/home/nonroot")
            for directory in ["tmp", "home/nonroot", "root"]:
                (root / directory).mkdir(parents=True, exist_ok=True)
            os.chmod(root / "tmp", 0o1777)
            os.chown(root / "home/nonroot", NONROOT, NONROOT)
    else:
        die(f"no offline recipe for the base image {stage.base}")
    for source, target in stage.copies:
        name = Path(source).name
        if name not in binaries:
            die(f"COPY {source}: no binary {name} built here")
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binaries[name], destination)
        os.chmod(destination, 0o755)
    for directory in stage.volumes + ([stage.workdir] if stage.workdir else []):
        path = root / directory.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        if stage.user and stage.user.split(":")[0].isdigit():
            os.chown(path, NONROOT, NONROOT)


def umoci_config_args(stage: Stage) -> list[str]:
    args = []
    if stage.user:
        args += ["--config.user", stage.user]
    for word in stage.entrypoint:
        args += ["--config.entrypoint", word]
    for key, value in stage.env.items():
        args += ["--config.env", f"{key}={value}"]
    for port in stage.expose:
        args += ["--config.exposedports", port]
    for key, value in stage.labels.items():
        args += ["--config.label", f"{key}={value}"]
    if stage.workdir:
        args += ["--config.workingdir", stage.workdir]
    for volume in stage.volumes:
        args += ["--config.volume", volume]
    return args


def build_image(
    name: str, profile: str, target_dir: Path, cache: Path, version: str, packages: list[str]
) -> Path:
    """One image's archive; `packages` are every image's Debian packages, so all of them
    are made from one debootstrap."""
    dockerfile = IMAGES / name / "Dockerfile"
    stage = parse_dockerfile(dockerfile)
    if stage.labels.get("org.opencontainers.image.version") != version:
        die(f"{dockerfile}: the version label is not the workspace's version {version}")
    binaries = {}
    for source, _ in stage.copies:
        binary = target_dir / profile / Path(source).name
        if not binary.exists():
            flag = " --release" if profile == "release" else ""
            die(f"{binary} is missing: run `cargo build{flag} -p {Path(source).name}` first")
        binaries[binary.name] = binary
    key_input = json.dumps({
        "dockerfile": dockerfile.read_text(),
        "builder": Path(__file__).read_text(),
        "binaries": {n: sha256_file(p) for n, p in binaries.items()},
    }, sort_keys=True)
    key = hashlib.sha256(key_input.encode()).hexdigest()[:12]
    archive = cache / f"{name}-{version}-{key}.oci.tar"
    if archive.exists():
        log(f"reusing {archive}")
        return archive
    debian = debian_rootfs(cache, packages)
    log(f"assembling {name}:{version} on {stage.base}")
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        scratch = Path(scratch)
        root = scratch / "rootfs"
        assemble_rootfs(stage, debian, binaries, root)
        for binary in (root / c[1].lstrip("/") for c in stage.copies):
            # Debug builds carry debug info the image does not need.
            run("strip", "--strip-debug", str(binary))
        layout = scratch / "layout"
        image = f"{layout}:{version}"
        run("umoci", "init", "--layout", str(layout))
        run("umoci", "new", "--image", image)
        run("umoci", "insert", "--image", image, str(root), "/", stdout=subprocess.DEVNULL)
        run("umoci", "config", "--image", image, "--os", "linux", "--architecture", "amd64",
            "--author", "AIOS", *umoci_config_args(stage))
        run("umoci", "gc", "--layout", str(layout))
        partial = archive.with_suffix(".partial")
        run("tar", "-C", str(layout), "-cf", str(partial), ".")
        partial.rename(archive)
    # Older builds of this image are never used again: keep the cache from growing.
    for stale in cache.glob(f"{name}-{version}-*.oci.tar"):
        if stale != archive:
            stale.unlink(missing_ok=True)
    log(f"built {archive} ({archive.stat().st_size // (1 << 20)} MiB)")
    return archive


def workspace_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    match = re.search(r'\[workspace\.package\][^\[]*?version\s*=\s*"([^"]+)"', text, re.S)
    if not match:
        die("no version in the workspace's Cargo.toml")
    return match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", default=["aios-operator", "aios-agent", "aios", "aios-verify-python"])
    parser.add_argument("--profile", choices=["debug", "release"], default="debug")
    args = parser.parse_args()
    cache_root = Path(os.environ.get("AIOS_CACHE_DIR")
                      or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aios")
    rustc = run("rustc", "-V", capture_output=True, text=True).stdout.split()[1]
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR") or cache_root / "target" / f"rust-{rustc}")
    if os.geteuid() != 0:
        die("building images needs root (debootstrap, and files owned by 65532)")
    cache = cache_root / "images"
    cache.mkdir(parents=True, exist_ok=True)
    version = workspace_version()
    for name in args.images:
        if not (IMAGES / name / "Dockerfile").exists():
            die(f"no image {name}: there is no images/{name}/Dockerfile")
    packages = sorted({
        package
        for dockerfile in IMAGES.glob("*/Dockerfile")
        for package in parse_dockerfile(dockerfile).packages
    })
    for name in args.images:
        print(build_image(name, args.profile, target_dir, cache, version, packages), flush=True)


if __name__ == "__main__":
    main()
