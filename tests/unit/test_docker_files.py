"""docker/: the Dockerfile, compose.yaml and the Kubernetes manifests agree with the
repository, its settings and each other.

No Docker engine or Kubernetes is needed: compose.yaml and docker/kubernetes/*.yaml are
read with PyYAML and the Dockerfile with the small line parser below. What is checked:
the services exist, images are pinned, addresses, topics and NUDGE_* variables match
``config/`` (docker environment), the paths the commands use exist in the repository,
the Flink, PyFlink and connector versions agree with ``requirements.txt``,
``constraints.txt``, ``pyproject.toml`` and ``pom.xml``, the Prometheus reporter is on,
the code's packages are importable from ``PYTHONPATH`` and no job ships them with ``-pyfs``;
and each job's FlinkDeployment runs the image's copy of the job with savepoint upgrades,
durable checkpoint storage, real settings and the options the job sets itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from config.settings import ENVIRONMENTS, SettingsError, load_settings
from jobs import snapshot_safe
from scripts import stack

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
README = ROOT / "docker" / "README.md"
K8S = ROOT / "docker" / "kubernetes"
IMAGE_HOME = PurePosixPath("/opt/nudge")  # the repository root inside the image
VENV_PYTHON = "/opt/nudge/.venv/bin/python"

JOBS = ("triggers", "profiles")  # jobs/<job>.py
PACKAGES = ("config", "jobs", "udfs", "schemas")  # the code's top-level packages
PYFS = ("-pyfs", "--pyFiles")  # `flink run` / PythonDriver: files for the Python workers
SUBMITS = tuple(f"submit-{job}" for job in JOBS)  # compose's one-shot submitter of each job
REQUIRED_SERVICES = ("kafka", "redis", "jobmanager", "taskmanager", "topics", *SUBMITS,
                     "generator")
NUDGE_SERVICES = ("jobmanager", "taskmanager", *SUBMITS, "generator")
ONE_SHOTS = ("topics", *SUBMITS, "generator")


# --- Dockerfile parsing -------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    line: int  # where the instruction starts (1-based)
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # everything after the keyword, continuation lines joined


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: `\\` at a line's end continues it on the next line;
    comment lines (also between continued lines) and blank lines are skipped."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if not parts:
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        keyword, _, args = "".join(parts).strip().partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        parts = []
    if parts:
        raise ValueError(f"line {start}: continuation runs past the end of the file")
    return instructions


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Replace ${NAME} and $NAME of the known variables, leaving the others."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None
    instructions: tuple[Instruction, ...]


@dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str]
    stages: tuple[Stage, ...]

    def all(self, keyword: str) -> Iterator[Instruction]:
        for stage in self.stages:
            yield from (i for i in stage.instructions if i.keyword == keyword)


def read_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[Instruction] = []
    head: tuple[str, str | None] | None = None
    for ins in parse_dockerfile(text):
        if ins.keyword == "FROM":
            if head is not None:
                stages.append(Stage(head[0], head[1], tuple(current)))
            tokens = [t for t in ins.args.split() if not t.startswith("--platform=")]
            image = substitute(tokens[0], global_args)
            name = tokens[2] if len(tokens) == 3 and tokens[1].lower() == "as" else None
            head, current = (image, name), []
        elif head is None:
            assert ins.keyword == "ARG", f"line {ins.line}: only ARG may precede FROM"
            name, _, default = ins.args.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            current.append(ins)
    assert head is not None, "no FROM"
    stages.append(Stage(head[0], head[1], tuple(current)))
    return Dockerfile(global_args, tuple(stages))


def copy_parts(ins: Instruction) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of a COPY or ADD."""
    args = ins.args
    tokens = json.loads(args) if args.startswith("[") else args.split()
    flags = {}
    while tokens and tokens[0].startswith("--"):
        key, _, value = tokens.pop(0)[2:].partition("=")
        flags[key] = value
    assert len(tokens) >= 2, f"line {ins.line}: COPY needs a source and a destination"
    return flags, tokens[:-1], tokens[-1]


def is_pinned(image: str) -> bool:
    """`name:tag` with a tag that names a version, not `latest` (a digest pins too)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and bool(re.search(r"\d", tag))


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return read_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def final_stage(dockerfile: Dockerfile) -> Stage:
    return dockerfile.stages[-1]


def image_env(dockerfile: Dockerfile) -> dict[str, str]:
    """The variables the final stage's ENV lines set (`ENV K=V ...` or `ENV K V`)."""
    env: dict[str, str] = {}
    for ins in final_stage(dockerfile).instructions:
        if ins.keyword != "ENV":
            continue
        words = shlex.split(ins.args)
        if "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
        else:
            env.update(w.split("=", 1) for w in words)
    return env


def repo_copies(dockerfile: Dockerfile) -> Iterator[tuple[list[str], str, PurePosixPath]]:
    """(sources, destination as written, destination in the image) of each COPY or ADD of
    the final stage that takes files from the repository (not from another stage)."""
    workdir = PurePosixPath("/")
    for ins in final_stage(dockerfile).instructions:
        if ins.keyword == "WORKDIR":
            workdir = workdir / ins.args
        if ins.keyword in ("COPY", "ADD"):
            flags, sources, dest = copy_parts(ins)
            if "from" not in flags:
                yield sources, dest, workdir / dest


def package_dirs(dockerfile: Dockerfile) -> dict[str, PurePosixPath]:
    """Where the final stage puts each package folder of PACKAGES (a folder's contents go
    into the destination)."""
    return {PurePosixPath(source).name: target
            for sources, _, target in repo_copies(dockerfile) for source in sources
            if PurePosixPath(source).name in PACKAGES and (ROOT / source).is_dir()}


def pythonpath_problems(dockerfile: Dockerfile) -> list[str]:
    """Why the image's PYTHONPATH would not import the packages as `config.settings`,
    `udfs.x`, ...: it must hold the one folder the package folders are copied into, and
    no package folder itself (its modules would become top-level ones)."""
    dirs = package_dirs(dockerfile)
    problems = [f"{name}/ is not copied into the image" for name in PACKAGES if name not in dirs]
    problems += [f"{name}/ is copied to {path}, not to a folder {name}"
                 for name, path in dirs.items() if path.name != name]
    homes = {path.parent for path in dirs.values()}
    if len(homes) != 1:
        return problems + [f"the packages are copied into several folders: {sorted(homes)}"]
    entries = [PurePosixPath(e) for e in image_env(dockerfile).get("PYTHONPATH", "").split(":")
               if e]
    home = homes.pop()
    if home not in entries:
        problems.append(f"PYTHONPATH {[str(e) for e in entries]} lacks {home}")
    problems += [f"PYTHONPATH holds the package folder {e}" for e in entries
                 if e in dirs.values()]
    return problems


# --- compose.yaml helpers -----------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def docker_settings() -> Any:
    return load_settings("docker", {})


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else shlex.split(str(value))


def argv(service: Mapping[str, Any]) -> list[str]:
    return as_list(service.get("entrypoint")) + as_list(service.get("command"))


def script_lines(service: Mapping[str, Any]) -> list[list[str]]:
    """The commands a service runs, split into words: each line of a shell script given
    as one argument (`sh -ec SCRIPT`), else the entrypoint + command itself."""
    words = argv(service)
    scripts = [w for w in words if "\n" in w]
    if not scripts:
        return [words]
    return [shlex.split(line) for script in scripts for line in script.splitlines()
            if line.strip()]


def health_words(service: Mapping[str, Any]) -> list[str]:
    test = (service.get("healthcheck") or {}).get("test") or []
    if isinstance(test, str):
        return shlex.split(test)
    return shlex.split(test[1]) if test and test[0] == "CMD-SHELL" else list(test[1:])


def option(words: list[str], name: str) -> str:
    assert name in words, f"{name} missing in {' '.join(words)}"
    index = words.index(name)
    assert index + 1 < len(words), f"{name} has no value in {' '.join(words)}"
    return words[index + 1]


def container_ports(service: Mapping[str, Any]) -> set[int]:
    """Container side of each published port ("127.0.0.1:8081:8081" -> 8081)."""
    ports = set()
    for entry in service.get("ports") or []:
        target = entry["target"] if isinstance(entry, dict) else str(entry).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


def flink_properties(service: Mapping[str, Any]) -> dict[str, str]:
    props = {}
    for line in environment(service).get("FLINK_PROPERTIES", "").splitlines():
        if line.strip():
            key, _, value = line.partition(":")
            props[key.strip()] = value.strip()
    return props


def in_repo(path: str) -> Path:
    """The repository path of a path under /opt/nudge in the image."""
    relative = PurePosixPath(path).relative_to(IMAGE_HOME)
    return ROOT.joinpath(*relative.parts)


def unknown_nudge_vars(env: Mapping[str, str]) -> list[str]:
    """The NUDGE_* variables of `env` that are no setting (or have a bad value)."""
    problems = []
    base = {"NUDGE_ENV": env.get("NUDGE_ENV", "docker")}
    for key, value in env.items():
        if not key.startswith("NUDGE_"):
            continue
        if key == "NUDGE_ENV":
            if value not in ENVIRONMENTS:
                problems.append(f"{key}={value}: not one of {ENVIRONMENTS}")
            continue
        if "__" not in key:  # load_settings would silently ignore it
            problems.append(f"{key}: not of the form NUDGE_SECTION__NAME")
            continue
        try:
            load_settings(environ={**base, key: value})
        except SettingsError as exc:
            problems.append(f"{key}: {exc}")
    return problems


# --- the Dockerfile ---------------------------------------------------------------------

def test_parser_joins_continuations_and_skips_comments() -> None:
    text = ("# a comment\nARG V=1\n\nFROM base:${V} AS one\nRUN a \\\n# inside\n"
            "    && b \\\n    && c\nCOPY --from=one /x /y\n")
    df = read_dockerfile(text)
    assert df.global_args == {"V": "1"}
    assert [(s.image, s.name) for s in df.stages] == [("base:1", "one")]
    run, copy = df.stages[0].instructions
    assert (run.keyword, run.line) == ("RUN", 5)
    assert run.args.split() == ["a", "&&", "b", "&&", "c"]
    assert copy_parts(copy) == ({"from": "one"}, ["/x"], "/y")
    with pytest.raises(ValueError):
        parse_dockerfile("RUN a \\\n")


def test_dockerfile_bases_are_pinned(dockerfile: Dockerfile) -> None:
    names: set[str] = set()
    for stage in dockerfile.stages:
        assert "$" not in stage.image, f"unresolved variable in FROM {stage.image}"
        assert stage.image in names or is_pinned(stage.image), f"FROM {stage.image} unpinned"
        if stage.name:
            names.add(stage.name)
    images = [s.image for s in dockerfile.stages]
    assert "maven:3.9-eclipse-temurin-17" in images
    assert re.fullmatch(r"flink:\d+\.\d+\.\d+-scala_2\.12-java17", final_stage(dockerfile).image)


def test_dockerfile_copy_sources_exist(dockerfile: Dockerfile) -> None:
    stage_names = {s.name for s in dockerfile.stages if s.name}
    copied = 0
    for stage in dockerfile.stages:
        for ins in stage.instructions:
            if ins.keyword not in ("COPY", "ADD"):
                continue
            flags, sources, _ = copy_parts(ins)
            if "from" in flags:
                assert flags["from"] in stage_names, f"line {ins.line}: unknown stage"
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"line {ins.line}: {source} not in the repo"
                copied += 1
    assert copied >= 7  # pom.xml, requirements, constraints, pyproject and four folders


def test_dockerfile_installs_the_code_into_opt_nudge(dockerfile: Dockerfile) -> None:
    destinations = {}
    for ins in final_stage(dockerfile).instructions:
        if ins.keyword == "COPY":
            flags, sources, dest = copy_parts(ins)
            if "from" not in flags:
                for source in sources:
                    destinations[source.rstrip("/")] = dest
    for name in (*PACKAGES, "pyproject.toml"):
        assert name in destinations, f"{name} is not copied into the image"
        target = PurePosixPath(destinations[name])
        assert target in (IMAGE_HOME, IMAGE_HOME / name), f"{name} goes to {target}"
    assert {"requirements.txt", "constraints.txt"} <= destinations.keys()


def test_pythonpath_check_can_fail() -> None:
    def problems(tail: str) -> list[str]:
        copies = "".join(f"COPY {name}/ {name}/\n" for name in PACKAGES)
        return pythonpath_problems(read_dockerfile(f"FROM a:1\nWORKDIR /app\n{copies}{tail}"))

    assert problems("ENV PYTHONPATH=/app\n") == []
    assert problems("ENV PYTHONPATH /lib:/app\n") == []
    assert problems("")  # no PYTHONPATH
    assert problems("ENV PYTHONPATH=/opt/nudge\n")  # not where the code is
    assert problems("ENV PYTHONPATH=/app:/app/udfs\n")  # udfs/profile.py as `profile`
    assert problems("COPY udfs/ /srv/udfs/\nENV PYTHONPATH=/app\n")  # two homes
    assert problems("COPY udfs/ /app/code/\nENV PYTHONPATH=/app\n")  # renamed


def test_dockerfile_puts_the_code_on_pythonpath(dockerfile: Dockerfile) -> None:
    """The job client, the UDF workers (they inherit the task manager's environment) and
    the generator import config, jobs, udfs and schemas from the image's PYTHONPATH."""
    assert not pythonpath_problems(dockerfile), pythonpath_problems(dockerfile)
    assert {path.parent for path in package_dirs(dockerfile).values()} == {IMAGE_HOME}


def test_dockerfile_builds_the_venv_and_points_flink_at_it(dockerfile: Dockerfile) -> None:
    runs = [i.args for i in final_stage(dockerfile).instructions if i.keyword == "RUN"]
    assert any("-m venv /opt/nudge/.venv" in r for r in runs)
    assert any(re.search(r"/opt/nudge/\.venv/bin/pip install -r requirements\.txt "
                         r"-c constraints\.txt", r) for r in runs)
    config = [r for r in runs if "config-parser-utils.sh" in r]
    assert len(config) == 1
    for key in ("python.executable", "python.client.executable"):
        assert f"-D{key}={VENV_PYTHON}" in config[0], f"{key} is not the venv's python"
    envs = " ".join(i.args for i in final_stage(dockerfile).instructions if i.keyword == "ENV")
    assert re.search(r"\bNUDGE_ENV=docker\b", envs)
    users = [i.args for i in final_stage(dockerfile).instructions if i.keyword == "USER"]
    assert users and users[-1] == "flink", "the image must not end up running as root"


def test_dockerfile_python_is_the_projects(dockerfile: Dockerfile) -> None:
    """The interpreter copied into the image is the version pyproject.toml allows."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python_images = [s.image for s in dockerfile.stages if s.image.startswith("python:")]
    assert len(python_images) == 1
    version = re.match(r"python:(\d+\.\d+)-", python_images[0])
    assert version, python_images[0]
    assert SpecifierSet(requires["requires-python"]).contains(f"{version.group(1)}.0")
    copies = [copy_parts(i) for i in final_stage(dockerfile).instructions
              if i.keyword == "COPY" and "--from=" in i.args]
    assert any(dest == f"/usr/local/bin/python{version.group(1)}" for _, _, dest in copies)


def test_connector_version_matches_pom(dockerfile: Dockerfile) -> None:
    pom = ET.parse(ROOT / "pom.xml").getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = pom.findtext("m:properties/m:flink.kafka.connector.version", namespaces=ns)
    assert version
    assert dockerfile.global_args.get("FLINK_KAFKA_CONNECTOR_VERSION") == version
    jar = f"flink-sql-connector-kafka-{version}.jar"
    into_lib = []
    for ins in final_stage(dockerfile).instructions:
        if ins.keyword == "COPY":
            flags, sources, dest = copy_parts(ins)
            sources = [substitute(s, dockerfile.global_args) for s in sources]
            if any(PurePosixPath(s).name == jar for s in sources):
                into_lib.append((flags.get("from"), dest))
    assert into_lib == [("jars", "/opt/flink/lib/")]
    jar_stage = next(s for s in dockerfile.stages if s.name == "jars")
    assert any(i.keyword == "RUN" and "mvn -q -B package" in i.args
               for i in jar_stage.instructions)
    # The local stack fetches the same jar; docker adds none to the job (it is in lib/).
    base = yaml.safe_load((ROOT / "config" / "base.yaml").read_text())
    assert [PurePosixPath(j).name for j in base["flink"]["jars"]] == [
        jar, PurePosixPath(snapshot_safe.JAR).name]
    assert load_settings("docker", {}).flink.jars == ()


def test_operator_jar_is_built_and_put_in_lib(dockerfile: Dockerfile) -> None:
    """The image builds nudge's operator from jobs/java/ against its own Flink's jars and
    puts it where config/docker.yaml expects it: in lib/ (flink.jars is empty)."""
    jar = PurePosixPath(snapshot_safe.JAR).name
    into_lib = [(copy_parts(i)[0].get("from"), copy_parts(i)[2])
                for i in final_stage(dockerfile).instructions
                if i.keyword == "COPY" and any(PurePosixPath(s).name == jar
                                               for s in copy_parts(i)[1])]
    assert into_lib == [("jars", "/opt/flink/lib/")]
    jar_stage = next(s for s in dockerfile.stages if s.name == "jars")
    copies = [copy_parts(i) for i in jar_stage.instructions if i.keyword == "COPY"]
    assert ({"from": "flink"}, ["/opt/flink/opt"], "/flink/opt") in copies
    assert ({}, ["jobs/java"], "jobs/java") in copies
    build = " ".join(i.args for i in jar_stage.instructions if i.keyword == "RUN")
    assert "javac" in build and "find jobs/java -name '*.java'" in build
    assert f"jar cf build/jars/flink/{jar}" in build
    flink_stage = next(s for s in dockerfile.stages if s.name == "flink")
    assert flink_stage.image == final_stage(dockerfile).image
    # `make jars` builds the same file the settings and the image name.
    assert f"OPERATOR_JAR := {snapshot_safe.JAR}" in (ROOT / "Makefile").read_text()


def pinned(path: Path, package: str) -> str | None:
    for line in path.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep and name.strip().lower() == package:
            return version.strip()
    return None


def test_flink_versions_agree(dockerfile: Dockerfile) -> None:
    flink = dockerfile.global_args.get("FLINK_VERSION")
    assert flink == "2.2.1"
    assert final_stage(dockerfile).image.startswith(f"flink:{flink}-")
    assert pinned(ROOT / "requirements.txt", "apache-flink") == flink
    assert pinned(ROOT / "constraints.txt", "apache-flink") == flink
    assert pinned(ROOT / "constraints.txt", "apache-flink-libraries") == flink
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"apache-flink=={flink}" in deps
    # ... and the build stops if the installed PyFlink is another version.
    assert any("pyflink.version" in i.args and "${FLINK_VERSION}" in i.args
               for i in dockerfile.all("RUN"))


# --- compose.yaml -------------------------------------------------------------------------

def test_required_services_exist(services: dict[str, Any]) -> None:
    missing = [name for name in REQUIRED_SERVICES if name not in services]
    assert not missing, f"services missing from compose.yaml: {missing}"


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image (give built services an image name too)"
        assert is_pinned(image), f"{name}: image {image} is not pinned"
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert services["topics"]["image"] == services["kafka"]["image"]
    assert services["redis"]["image"].split(":")[0] == "redis"
    assert services["redis"]["image"].split(":")[1].split(".")[0] == "7"


def test_nudge_services_are_built_from_the_dockerfile(services: dict[str, Any],
                                                      dockerfile: Dockerfile) -> None:
    images = set()
    for name in NUDGE_SERVICES:
        build = services[name].get("build")
        assert isinstance(build, dict), f"{name}: not built from docker/Dockerfile"
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, f"{name}: build context {context} is not the repository"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        images.add(services[name]["image"])
    assert len(images) == 1, f"one image for all nudge services, not {images}"
    assert images.pop().endswith(":" + dockerfile.global_args["FLINK_VERSION"])


def test_kafka_address_matches_settings(services: dict[str, Any], docker_settings: Any) -> None:
    bootstrap = docker_settings.kafka.bootstrap
    host, _, port = bootstrap.rpartition(":")
    assert host in services and services[host]["image"].startswith("apache/kafka:")
    env = environment(services[host])
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    names = [n for n, address in advertised.items() if address == bootstrap]
    assert names, f"no listener is advertised as {bootstrap}"
    assert listeners[names[0]].rpartition(":")[2] == port
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == names[0]
    # Everything in compose that talks to Kafka uses that address.
    used = 0
    for name, service in services.items():
        for words in [*script_lines(service), health_words(service)]:
            for flag in ("--bootstrap-server", "--bootstrap"):
                if flag in words:
                    assert option(words, flag) == bootstrap, f"{name}: {' '.join(words)}"
                    used += 1
    assert used >= 7  # five topics, the listing, the health check, the generator


def test_redis_address_matches_settings(services: dict[str, Any], docker_settings: Any) -> None:
    url = urlparse(docker_settings.redis.url)
    assert url.hostname in services, f"no service {url.hostname} for redis.url"
    redis = services[url.hostname]
    assert redis["image"].startswith("redis:")
    words = argv(redis)
    port = int(option(words, "--port")) if "--port" in words else 6379
    assert port == (url.port or 6379)
    assert port in container_ports(redis)
    assert option(health_words(redis), "-p") == str(port)


def test_nudge_env_vars_are_settings(services: dict[str, Any], dockerfile: Dockerfile) -> None:
    assert unknown_nudge_vars({"NUDGE_KAFKA__NO_SUCH_THING": "x"}), "the check cannot fail"
    found = {}
    for name, service in services.items():
        env = environment(service)
        assert not unknown_nudge_vars(env), f"{name}: {unknown_nudge_vars(env)}"
        found.update({k: v for k, v in env.items() if k.startswith("NUDGE_")})
    for name in NUDGE_SERVICES:
        assert environment(services[name]).get("NUDGE_ENV") == "docker", name
    env = image_env(dockerfile)
    assert env.get("NUDGE_ENV") == "docker"
    assert not unknown_nudge_vars(env), unknown_nudge_vars(env)
    assert found.get("NUDGE_ENV") == "docker"


def test_topics_match_settings(services: dict[str, Any], docker_settings: Any,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    created = {}
    for words in script_lines(services["topics"]):
        if "--create" in words:
            assert words[0] == "/opt/kafka/bin/kafka-topics.sh"
            assert "--if-not-exists" in words
            assert option(words, "--replication-factor") == "1"
            created[option(words, "--topic")] = int(option(words, "--partitions"))
    topics = docker_settings.topics
    assert set(created) == {topics.events, topics.notifications, topics.dlq,
                            topics.privacy, topics.audit}
    for key in [k for k in os.environ if k.startswith("NUDGE_")]:
        monkeypatch.delenv(key)
    assert created == stack.contract_topics()  # the same partitions as the local stack


def test_flink_cluster_config(services: dict[str, Any]) -> None:
    jm, tm = services["jobmanager"], services["taskmanager"]
    assert argv(jm) == ["jobmanager"] and argv(tm) == ["taskmanager"]
    props = flink_properties(tm)
    assert props == flink_properties(jm), "job and task manager configurations differ"
    assert props["jobmanager.rpc.address"] in services
    assert props["jobmanager.rpc.address"] == "jobmanager"
    assert int(props["taskmanager.numberOfTaskSlots"]) == stack.FLINK_SLOTS
    for key, value in props.items():  # the image's entrypoint deletes all whitespace
        assert not re.search(r"\s", key + value), f"whitespace in {key}: {value}"
    assert stack.FLINK_REST_PORT in container_ports(jm)
    checkpoints = PurePosixPath(urlparse(props["execution.checkpointing.dir"]).path)
    for service in (jm, tm):
        mounts = [str(v).split(":")[1] for v in service.get("volumes") or []]
        assert str(checkpoints) in mounts, "checkpoints must be on a volume both can reach"


def job_name(job: str) -> str:
    """The name jobs/<job>.py gives its Flink job (its JOB_NAME)."""
    found = re.search(r'^JOB_NAME = "([^"]+)"', (ROOT / "jobs" / f"{job}.py").read_text(), re.M)
    assert found, f"jobs/{job}.py has no JOB_NAME"
    return found.group(1)


def pyfs_problems(words: list[str]) -> list[str]:
    """The `-pyfs` entries of a `flink run` or PythonDriver command line that name a package
    folder (or the folder holding them, and the image's venv). The image has the code on
    PYTHONPATH, and -pyfs puts each folder itself on the workers' PYTHONPATH, so its
    modules become top-level ones (udfs/profile.py hides the standard `profile`)."""
    problems = []
    for index, word in enumerate(words):
        if word not in PYFS:
            continue
        assert index + 1 < len(words), f"{word} has no value in {' '.join(words)}"
        for entry in words[index + 1].split(","):
            path = PurePosixPath(entry.rstrip("/"))
            if path.name in PACKAGES or path == IMAGE_HOME:
                problems.append(f"{word} {entry}")
    return problems


def test_pyfs_check_can_fail() -> None:
    assert pyfs_problems(["flink", "run", "-py", "/opt/nudge/jobs/triggers.py"]) == []
    assert pyfs_problems(["-pyfs", "/data/extra.zip", "-py", "x.py"]) == []
    assert pyfs_problems(["-pyfs", "/opt/nudge/config,/opt/nudge/udfs/"]) == \
        ["-pyfs /opt/nudge/config", "-pyfs /opt/nudge/udfs/"]
    assert pyfs_problems(["--pyFiles", "schemas"]) == ["--pyFiles schemas"]
    assert pyfs_problems(["-pyfs", "/opt/nudge"]) == ["-pyfs /opt/nudge"]  # ships the venv


def submit_words(service: Mapping[str, Any]) -> list[str]:
    """The one `flink run` command of a submitter, split into words."""
    runs = [w for w in script_lines(service) if w[:2] == ["flink", "run"]]
    assert len(runs) == 1, "one `flink run` per submitter"
    return runs[0]


@pytest.mark.parametrize("job", JOBS)
def test_submit_command(services: dict[str, Any], job: str) -> None:
    submit = services[f"submit-{job}"]
    words = submit_words(submit)
    assert "-d" in words
    host, _, port = option(words, "-m").partition(":")
    assert host == "jobmanager" and int(port) in container_ports(services[host])
    script = option(words, "-py")
    assert in_repo(script).is_file(), f"{script} is not a file of the repository"
    assert script == f"/opt/nudge/jobs/{job}.py"
    assert not pyfs_problems(words), pyfs_problems(words)
    assert f"{job_name(job)} (RUNNING)" in " ".join(argv(submit))
    needs = submit["depends_on"]
    assert needs["jobmanager"]["condition"] == "service_healthy"
    assert needs["topics"]["condition"] == "service_completed_successfully"


def test_generator_command(services: dict[str, Any], docker_settings: Any) -> None:
    gen = services["generator"]
    words = argv(gen)
    assert words[0] == VENV_PYTHON
    assert gen["working_dir"] == str(IMAGE_HOME)
    assert option(words, "-m") == "jobs.generate"
    assert (ROOT / "jobs" / "generate.py").is_file()
    assert option(words, "--bootstrap") == docker_settings.kafka.bootstrap
    assert (option(words, "--count"), option(words, "--rate")) == ("100000", "2000")
    for submit in SUBMITS:  # traffic once both jobs read the topic
        assert gen["depends_on"][submit]["condition"] == "service_completed_successfully"


def test_dependencies_and_health_checks(services: dict[str, Any]) -> None:
    for name in ("kafka", "redis", "jobmanager"):
        test = (services[name].get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no health check"
    for name in ONE_SHOTS:
        assert services[name].get("restart") == "no", f"{name} is a one-shot"
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    graph: dict[str, set[str]] = {}
    for name, service in services.items():
        needs = service.get("depends_on") or {}
        assert isinstance(needs, dict), f"{name}: give depends_on with conditions"
        graph[name] = set(needs)
        for other, spec in needs.items():
            assert other in services, f"{name} depends on unknown {other}"
            assert spec["condition"] in conditions
            if spec["condition"] == "service_healthy":
                assert services[other].get("healthcheck"), f"{other} has no health check"
            if spec["condition"] == "service_completed_successfully":
                assert other in ONE_SHOTS, f"{other} never completes"

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"dependency cycle: {' -> '.join(path + (node,))}"
        for nxt in graph[node]:
            visit(nxt, path + (node,))

    for node in graph:
        visit(node, ())
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_readme_names_the_command_and_ports() -> None:
    text = README.read_text(encoding="utf-8")
    assert "docker compose -f docker/compose.yaml up --build" in text
    for port in ("8081", "9094", "6379"):
        assert port in text
    assert "tests/unit/test_docker_files.py" in text


# --- the Prometheus reporter --------------------------------------------------------------

PROM = "metrics.reporter.prom."
PROM_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


def image_flink_options(dockerfile: Dockerfile) -> dict[str, str]:
    """The `-Dkey=value` options the Dockerfile writes into the image's conf/config.yaml."""
    runs = [i.args for i in final_stage(dockerfile).instructions
            if i.keyword == "RUN" and "config-parser-utils.sh" in i.args]
    assert len(runs) == 1, "one RUN writes the image's Flink configuration"
    return dict(re.findall(r'"-D([^=" ]+)=([^" ]+)"', runs[0]))


def test_dockerfile_enables_the_prometheus_reporter(dockerfile: Dockerfile,
                                                    services: dict[str, Any]) -> None:
    options = image_flink_options(dockerfile)
    assert options.get(PROM + "factory.class") == PROM_FACTORY
    port = int(options[PROM + "port"])
    # The reporter's jar is a plugin of the Flink distribution; the build checks it is there.
    jar = "$FLINK_HOME/plugins/metrics-prometheus/flink-metrics-prometheus-${FLINK_VERSION}.jar"
    runs = [i.args for i in final_stage(dockerfile).instructions if i.keyword == "RUN"]
    assert any(f'test -f "{jar}"' in r for r in runs), "the build does not check the plugin"
    exposed = {int(p.split("/")[0]) for i in final_stage(dockerfile).instructions
               if i.keyword == "EXPOSE" for p in i.args.split()}
    assert port in exposed
    for name in ("jobmanager", "taskmanager"):
        assert port in container_ports(services[name]), f"{name} does not publish /metrics"
        assert flink_properties(services[name]).get(PROM + "port", str(port)) == str(port)


# --- Kubernetes (docker/kubernetes/) ------------------------------------------------------

MAIN_CONTAINER = "flink-main-container"  # the operator's name for the Flink container
PYTHON_DRIVER = "org.apache.flink.client.python.PythonDriver"
# PythonDriver's options that take a value; they must come before the job's arguments.
DRIVER_OPTIONS = ("-py", "-pym", "-pyfs", "-pyarch", "-pyreq", "-pyexec", "-pyclientexec",
                  "-pypath")
STORAGE_KEYS = ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir",
                "high-availability.storageDir")
_FLINK_DURATION = re.compile(r"(\d+)\s*(ms|s|min|h|d)")
_FLINK_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """Each job's FlinkDeployment, docker/kubernetes/<job>.yaml."""
    docs = {}
    for job in JOBS:
        loaded = list(yaml.safe_load_all((K8S / f"{job}.yaml").read_text(encoding="utf-8")))
        assert len(loaded) == 1 and isinstance(loaded[0], dict), f"{job}.yaml: one resource"
        docs[job] = loaded[0]
    return docs


def main_container(doc: Mapping[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["podTemplate"]["spec"]["containers"]
    found = [c for c in containers if c.get("name") == MAIN_CONTAINER]
    assert len(found) == 1, f"the pod template needs one container {MAIN_CONTAINER}"
    return found[0]


def pod_env(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod template's environment variables by name, each entry as written."""
    return {e["name"]: e for e in main_container(doc).get("env") or []}


def literal_env(doc: Mapping[str, Any]) -> dict[str, str]:
    """The variables given by value (not from a Secret)."""
    return {name: str(e["value"]) for name, e in pod_env(doc).items() if "value" in e}


def driver_args(doc: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """PythonDriver's options (which lead) and the job's own arguments (the rest)."""
    args = [str(a) for a in doc["spec"]["job"]["args"]]
    options: dict[str, str] = {}
    while args and args[0] in DRIVER_OPTIONS:
        assert len(args) > 1, f"{args[0]} has no value"
        options[args[0]] = args[1]
        args = args[2:]
    return options, args


def image_files(dockerfile: Dockerfile) -> dict[PurePosixPath, Path]:
    """Where the final stage's COPY lines put the repository's files: image path -> file."""
    files: dict[PurePosixPath, Path] = {}
    for sources, dest, target in repo_copies(dockerfile):
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                files.update({target / f.relative_to(path).as_posix(): f
                              for f in path.rglob("*") if f.is_file()})
            else:
                into_dir = dest.endswith("/") or len(sources) > 1
                files[target / path.name if into_dir else target] = path
    return files


def setting_paths(tree: Mapping[str, Any], prefix: str = "") -> set[str]:
    """The dotted paths of the settings (the leaves) of a config/ YAML tree."""
    paths = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            paths |= setting_paths(value, f"{prefix}{key}.")
        else:
            paths.add(f"{prefix}{key}")
    return paths


def env_var_path(name: str) -> str:
    """NUDGE_A__B__C -> a.b.c, config/settings.py's rule."""
    return name.removeprefix("NUDGE_").lower().replace("__", ".")


def flink_value(value: Any) -> Any:
    """A Flink option's value, comparable: durations in ms, the rest lower-case text."""
    text = str(value).strip()
    match = _FLINK_DURATION.fullmatch(text)
    return int(match.group(1)) * _FLINK_UNIT_MS[match.group(2)] if match else text.lower()


def options_the_job_sets(settings: Any) -> dict[str, str]:
    """The Flink options jobs/runtime.py sets from the settings when the job starts. They
    win over the manifest's flinkConfiguration, so the two must say the same."""
    from jobs import runtime

    options = {"execution.checkpointing.interval": f"{settings.flink.checkpoint_interval_ms} ms"}
    checkpoint_options = getattr(runtime, "checkpoint_options", None)  # timeouts, backend, ...
    if checkpoint_options is not None:
        options.update(checkpoint_options(settings.flink))
    return options


def test_k8s_one_manifest_per_job_and_a_readme() -> None:
    assert sorted(p.stem for p in K8S.glob("*.y*ml")) == sorted(JOBS)
    text = (K8S / "README.md").read_text(encoding="utf-8")
    for job in JOBS:
        assert f"docker/kubernetes/{job}.yaml" in text
    assert "helm install" in text and "secret" in text


def test_k8s_helpers() -> None:
    assert flink_value("30 s") == flink_value("30000 ms") == 30_000
    assert flink_value("1 min") == 60_000 and flink_value("RocksDB") == "rocksdb"
    assert env_var_path("NUDGE_KAFKA__BOOTSTRAP") == "kafka.bootstrap"
    assert setting_paths({"a": {"b": 1, "c": {"d": []}}, "e": ""}) == {"a.b", "a.c.d", "e"}
    doc = {"spec": {"job": {"args": ["-pyfs", "x,y", "-py", "j.py", "--env", "cluster"]}}}
    assert driver_args(doc) == ({"-pyfs": "x,y", "-py": "j.py"}, ["--env", "cluster"])


@pytest.mark.parametrize("job", JOBS)
def test_k8s_flink_deployment(manifests: dict[str, dict[str, Any]], job: str,
                              dockerfile: Dockerfile, services: dict[str, Any]) -> None:
    doc = manifests[job]
    assert doc["apiVersion"] == "flink.apache.org/v1beta1"
    assert doc["kind"] == "FlinkDeployment"
    assert doc["metadata"]["name"] == job_name(job)
    spec = doc["spec"]
    # Application mode: the deployment carries its job, on the operator's native mode.
    assert spec.get("mode", "native") == "native" and spec["job"]
    major, minor, _ = dockerfile.global_args["FLINK_VERSION"].split(".")
    assert spec["flinkVersion"] == f"v{major}_{minor}"
    assert spec["image"] == services["jobmanager"]["image"], "not the image compose builds"
    assert spec["serviceAccount"]
    assert spec["job"]["upgradeMode"] == "savepoint"
    assert spec["job"].get("state", "running") == "running"


@pytest.mark.parametrize("job", JOBS)
def test_k8s_runs_the_images_copy_of_the_job(manifests: dict[str, dict[str, Any]], job: str,
                                             dockerfile: Dockerfile) -> None:
    spec = manifests[job]["spec"]["job"]
    version = dockerfile.global_args["FLINK_VERSION"]
    assert spec["jarURI"] == f"local:///opt/flink/opt/flink-python-{version}.jar"
    assert spec["entryClass"] == PYTHON_DRIVER
    options, job_args = driver_args(manifests[job])
    files = image_files(dockerfile)
    script = PurePosixPath(options["-py"])
    assert files.get(script) == ROOT / "jobs" / f"{job}.py", f"{script} is not jobs/{job}.py"
    args = [str(a) for a in spec["args"]]
    assert not pyfs_problems(args), f"{job}.yaml: {pyfs_problems(args)}"
    assert options["-pyclientexec"] == image_flink_options(dockerfile)["python.client.executable"]
    assert job_args == ["--env", "cluster"]
    assert pod_env(manifests[job])["NUDGE_ENV"]["value"] == "cluster"


@pytest.mark.parametrize("job", JOBS)
def test_k8s_state_storage(manifests: dict[str, dict[str, Any]], job: str,
                           dockerfile: Dockerfile) -> None:
    conf = manifests[job]["spec"]["flinkConfiguration"]
    schemes = set()
    for key in STORAGE_KEYS:
        uri = urlparse(conf.get(key, ""))
        assert uri.scheme not in ("", "file") and uri.netloc, f"{key}: not shared storage"
        schemes.add(uri.scheme)
    assert conf["state.backend.type"] == "rocksdb"
    assert conf["execution.checkpointing.incremental"] == "true"
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == \
        "RETAIN_ON_CANCELLATION"
    assert conf["restart-strategy.type"] == "exponential-delay"
    assert isinstance(flink_value(conf["execution.checkpointing.interval"]), int)
    if "s3" in schemes:  # the image's entrypoint links Flink's S3 plugin from opt/
        plugins = pod_env(manifests[job])["ENABLE_BUILT_IN_PLUGINS"]["value"].split(";")
        version = re.escape(dockerfile.global_args["FLINK_VERSION"])
        assert any(re.fullmatch(rf"flink-s3-fs-(presto|hadoop)-{version}\.jar", p)
                   for p in plugins), plugins


def test_k8s_jobs_keep_their_state_apart(manifests: dict[str, dict[str, Any]]) -> None:
    uris = [m["spec"]["flinkConfiguration"][key] for m in manifests.values()
            for key in STORAGE_KEYS]
    assert len(set(uris)) == len(uris), "each job needs folders of its own"


@pytest.mark.parametrize("job", JOBS)
def test_k8s_parallelism_and_resources(manifests: dict[str, dict[str, Any]], job: str) -> None:
    spec = manifests[job]["spec"]
    parallelism = spec["job"]["parallelism"]
    slots = int(spec["flinkConfiguration"]["taskmanager.numberOfTaskSlots"])
    assert isinstance(parallelism, int) and parallelism >= 1 and slots >= 1
    replicas = spec["taskManager"].get("replicas")
    if replicas is not None:
        assert parallelism <= slots * replicas, "more parallelism than task slots"
    # The job sets its parallelism from its settings, which must say the same.
    assert load_settings("cluster", literal_env(manifests[job])).flink.parallelism == parallelism
    for role in ("jobManager", "taskManager"):
        resource = spec[role]["resource"]
        memory = re.fullmatch(r"(\d+)([mg])", str(resource["memory"]))
        assert memory, f"{role}: memory {resource['memory']}"
        assert int(memory.group(1)) * (1024 if memory.group(2) == "g" else 1) >= 1024
        assert float(resource["cpu"]) > 0


@pytest.mark.parametrize("job", JOBS)
def test_k8s_env_vars_are_settings(manifests: dict[str, dict[str, Any]], job: str) -> None:
    settings = setting_paths(yaml.safe_load((ROOT / "config" / "base.yaml").read_text()))
    env = pod_env(manifests[job])
    names = [n for n in env if n.startswith("NUDGE_") and n != "NUDGE_ENV"]
    unknown = [n for n in names if env_var_path(n) not in settings]
    assert not unknown, f"{job}.yaml: no such setting: {unknown}"
    assert not unknown_nudge_vars(literal_env(manifests[job]))
    assert "NUDGE_KAFKA__BOOTSTRAP" in names
    if "settings.redis" in (ROOT / "jobs" / f"{job}.py").read_text():  # the job uses Redis
        ref = env["NUDGE_REDIS__URL"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"], "the Redis URL (maybe with a password) is a Secret"


@pytest.mark.parametrize("job", JOBS)
def test_k8s_config_agrees_with_the_job(manifests: dict[str, dict[str, Any]], job: str) -> None:
    conf = manifests[job]["spec"]["flinkConfiguration"]
    assert all(isinstance(v, str) for v in conf.values()), "quote flinkConfiguration values"
    expected = options_the_job_sets(load_settings("cluster", literal_env(manifests[job])))
    for key, value in expected.items():
        assert key in conf, f"{job}.yaml: {key} missing (the job sets {value})"
        assert flink_value(conf[key]) == flink_value(value), \
            f"{job}.yaml: {key} is {conf[key]}, the job sets {value}"


@pytest.mark.parametrize("job", JOBS)
def test_k8s_python_and_metrics_match_the_image(manifests: dict[str, dict[str, Any]], job: str,
                                                dockerfile: Dockerfile) -> None:
    conf = manifests[job]["spec"]["flinkConfiguration"]
    image = image_flink_options(dockerfile)
    # The operator replaces the image's conf/config.yaml: what the image set is repeated.
    for key in ("python.executable", "python.client.executable", PROM + "factory.class",
                PROM + "port"):
        assert conf.get(key) == image[key], f"{job}.yaml: {key}"
    port = int(image[PROM + "port"])
    ports = {p["name"]: p["containerPort"] for p in main_container(manifests[job])["ports"]}
    assert ports.get("metrics") == port
    annotations = manifests[job]["spec"]["podTemplate"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
