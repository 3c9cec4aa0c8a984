"""The deployment files, without a Docker engine, a Slurm controller or a Kubernetes cluster:

- ``docker-compose.yml`` parsed by a strict compose-spec implementation (``compose-spec``,
  bindings of the Rust ``compose_spec`` crate) after Compose's variable interpolation with
  ``deploy/docker/env.example``, and its services checked for what mixopt needs;
- the Dockerfiles parsed by ``dockerfile-parse``; every ``mixopt ...`` command in them, in the
  compose file, the Slurm scripts and the Kubernetes manifest resolved against the real CLI
  (unknown commands, options or bad values fail); every ``MIXOPT_*`` variable they set checked
  against the real settings and CLI;
- the Kubernetes manifest validated against the Kubernetes OpenAPI schemas (``kubernetes-validate``,
  strict: unknown fields fail);
- the worker image's entrypoint and the Slurm scripts *run* here, against a real server, with
  the environment Docker and Slurm would give them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import typer
import yaml

from service.cli import app
from service.settings import Settings, check_exposure
from workers.client import ApiError, MixoptClient

from .conftest import ROOT, ServerProcess, free_port, wait_for

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "docker" / "env.example"
SERVER_DOCKERFILE = ROOT / "deploy" / "docker" / "server.Dockerfile"
WORKER_DOCKERFILE = ROOT / "deploy" / "docker" / "worker.Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "docker" / "worker-entrypoint.sh"
SBATCH = ROOT / "deploy" / "slurm" / "worker.sbatch"
SLURM_SERVER = ROOT / "deploy" / "slurm" / "server.sh"
K8S_WORKER = ROOT / "deploy" / "k8s" / "worker.yaml"
BIN = Path(sys.executable).parent  # where `mixopt` is installed next to this interpreter


# ---- the real CLI and settings ------------------------------------------------------------------

def resolve(argv: list[str]) -> tuple[str, dict]:
    """Parse ``mixopt ...`` with the real click command: ``("worker", params)``; raises the CLI's
    usage errors for an unknown option, a missing or bad value (AssertionError: unknown command)."""
    assert argv and argv[0] == "mixopt", argv
    command = typer.main.get_command(app)  # typer's own (vendored) click command
    args, path = list(argv[1:]), []
    while hasattr(command, "commands"):  # a group
        assert args, f"`mixopt {' '.join(path)}` needs a sub-command"
        sub = command.get_command(typer.Context(command), args[0])
        assert sub is not None, f"mixopt has no command {' '.join([*path, args[0]])!r}"
        path.append(args.pop(0))
        command = sub
    ctx = command.make_context(" ".join(["mixopt", *path]), args)
    return " ".join(path), ctx.params


def mixopt_commands(shell: str) -> list[list[str]]:
    """The ``mixopt ...`` invocations of a shell command line (``a && exec mixopt b; c``)."""
    out = []
    for part in re.split(r"&&|\|\||;|\n", shell):
        words = shlex.split(part)
        if words and words[0] == "exec":
            words = words[1:]
        if words and words[0] == "mixopt":
            out.append(words)
    return out


def known_variables() -> set[str]:
    """``MIXOPT_*`` variables mixopt reads: settings, CLI options' envvars, the client's."""
    names = {f"MIXOPT_{name.upper()}" for name in Settings.model_fields}

    def walk(command) -> None:
        for param in command.params:
            envvars = param.envvar if isinstance(param.envvar, (list, tuple)) else [param.envvar]
            names.update(e for e in envvars if e)
        if hasattr(command, "commands"):
            for sub in command.commands.values():
                walk(sub)

    walk(typer.main.get_command(app))
    client = (ROOT / "workers" / "client.py").read_text()
    names.update(re.findall(r"os\.environ\.get\(\"(MIXOPT_[A-Z_]+)\"", client))
    return names


def documented_variables(path: Path) -> set[str]:
    """Variables a script documents in its header's ``Environment:`` list."""
    header = path.read_text().split("Environment", 1)
    if len(header) < 2:
        return set()
    block = header[1].split("\n\n", 1)[0]
    return set(re.findall(r"^#\s+(MIXOPT_[A-Z_]+)\s", block, flags=re.M))


def test_resolve_refuses_what_the_cli_refuses():
    with pytest.raises(Exception, match="No such option: --gpus"):
        resolve(["mixopt", "worker", "--gpus", "2"])
    with pytest.raises(typer.BadParameter, match="valid integer"):
        resolve(["mixopt", "server", "--port", "http"])
    with pytest.raises(Exception, match="Missing parameter: study"):
        resolve(["mixopt", "runs", "import", str(COMPOSE)])
    with pytest.raises(AssertionError, match="no command"):
        resolve(["mixopt", "serve"])
    assert mixopt_commands("mixopt db upgrade && exec mixopt server --host 0.0.0.0") == [
        ["mixopt", "db", "upgrade"], ["mixopt", "server", "--host", "0.0.0.0"]]


def test_variables_used_by_deploy_files_are_read_by_mixopt():
    known = known_variables()
    assert {"MIXOPT_DATABASE_URL", "MIXOPT_JOIN_SECRET", "MIXOPT_URL", "MIXOPT_TOKEN"} <= known
    for path in [COMPOSE, ENV_EXAMPLE, SERVER_DOCKERFILE, WORKER_DOCKERFILE, ENTRYPOINT, SBATCH, SLURM_SERVER, K8S_WORKER]:
        used = set(re.findall(r"MIXOPT_[A-Z][A-Z_]*[A-Z]", path.read_text()))
        extra = documented_variables(path) | (documented_variables(ENTRYPOINT) if path in (COMPOSE, ENV_EXAMPLE) else set())
        unknown = sorted(used - known - extra)
        assert not unknown, f"{path.relative_to(ROOT)} uses {unknown}: neither a setting, a CLI option nor documented"


# ---- docker compose -----------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<plain>\w+))")


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation (``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR:?error}``, ``$$``) over a parsed compose file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        name, op, arg = m.group("braced") or m.group("plain"), m.group("op"), m.group("arg")
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("-") and unset:
            return arg
        if op and op.endswith("?") and unset:
            raise KeyError(f"required variable {name} is missing a value: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env_example())


def test_compose_file_is_valid_compose_spec(compose):
    from compose_spec import PyCompose

    parsed = PyCompose.from_yaml(yaml.safe_dump(compose))
    assert sorted(parsed.service_names()) == ["grafana", "postgres", "prometheus", "server", "worker"]
    with pytest.raises(ValueError, match="extension key"):  # the validator does refuse what is not compose
        PyCompose.from_yaml(yaml.safe_dump({**compose, "services": {**compose["services"], "worker": {
            **compose["services"]["worker"], "gpus_per_replica": 1}}}))


def test_compose_needs_the_secrets_and_env_example_has_every_variable():
    raw = yaml.safe_load(COMPOSE.read_text())
    referenced = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert referenced <= set(env_example()), f"env.example lacks {sorted(referenced - set(env_example()))}"
    for secret in ("POSTGRES_PASSWORD", "MIXOPT_ADMIN_TOKEN", "MIXOPT_JOIN_SECRET"):
        env = {k: v for k, v in env_example().items() if k != secret}
        with pytest.raises(KeyError, match=secret):
            interpolate(raw, env)


def test_compose_postgres_keeps_its_data_and_reports_health(compose):
    pg = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:\d+(-\w+)?", pg["image"]), "pin the Postgres major version"
    assert "pgdata:/var/lib/postgresql/data" in pg["volumes"]
    assert "pgdata" in compose["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_compose_server_migrates_then_serves_with_auth(compose):
    server = compose["services"]["server"]
    command = server["command"]
    assert command[:2] == ["sh", "-c"]
    resolved = [resolve(argv) for argv in mixopt_commands(command[2])]
    assert [name for name, _ in resolved] == ["db upgrade", "server"]
    params = resolved[1][1]
    assert params["host"] == "0.0.0.0"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"

    env = server["environment"]
    settings = Settings(_env_file=None, **{k[len("MIXOPT_"):].lower(): v for k, v in env.items()})
    assert settings.auth_enabled and settings.admin_token and settings.join_secret and not settings.auto_migrate
    check_exposure(settings, params["host"])  # the server's own rule for a non-loopback bind
    with pytest.raises(ValueError, match="refusing"):
        check_exposure(settings.model_copy(update={"auth_enabled": False}), params["host"])

    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    pg_env = compose["services"]["postgres"]["environment"]
    assert (url.get_backend_name(), url.host, url.username, url.database) == (
        "postgresql", "postgres", pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"])
    assert url.password == pg_env["POSTGRES_PASSWORD"]

    check = server["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    ast.parse(check[3])
    probe = urlparse(re.search(r"'(http[^']+)'", check[3]).group(1))
    assert (probe.port, probe.path) == (params["port"], "/healthz")
    from service.api.routes.health import router

    assert "/healthz" in {route.path for route in router.routes}
    published = server["ports"][0].rsplit(":", 1)[1]
    assert int(published) == params["port"]


def test_compose_worker_scales_over_gpus(compose):
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    # --scale worker=N: nothing that names or binds one container
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    assert worker["depends_on"]["server"]["condition"] == "service_healthy"

    name, params = resolve(worker["command"] + entrypoint_extra_args())
    assert name == "worker" and params["executor"] == "proxy"
    url = urlparse(params["url"])
    assert url.hostname in compose["services"] and url.hostname == "server"
    server_port = resolve(mixopt_commands(compose["services"]["server"]["command"][2])[1])[1]["port"]
    assert url.port == server_port
    assert worker["environment"]["MIXOPT_JOIN_SECRET"] == compose["services"]["server"]["environment"]["MIXOPT_JOIN_SECRET"]

    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert str(params["corpus"]) in mounts and str(params["cache_dir"]) in mounts
    slot_root = re.search(r'MIXOPT_SLOT_ROOT:-([^}"]+)', ENTRYPOINT.read_text()).group(1)
    assert mounts[slot_root] in compose["volumes"], "the slots (identities, outboxes) must be on a named volume"
    assert mounts[str(params["cache_dir"])] in compose["volumes"]
    assert worker["init"] is True and worker["stop_grace_period"]


# ---- Dockerfiles --------------------------------------------------------------------------------

def dockerfile(path: Path):
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(path))
    return parser, [(i["instruction"], i["value"]) for i in parser.structure]


def entrypoint_extra_args() -> list[str]:
    """What the worker entrypoint appends to ``mixopt worker``."""
    line = next(l for l in ENTRYPOINT.read_text().splitlines() if l.startswith('exec "$@"'))
    return [re.sub(r"\$\{?[^ }\"]+\}?", "x", w) for w in shlex.split(line)[2:]]


def test_dockerfiles_copy_what_exists_and_is_not_ignored():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for path in (SERVER_DOCKERFILE, WORKER_DOCKERFILE):
        _, instructions = dockerfile(path)
        copies = [shlex.split(v) for k, v in instructions if k == "COPY"]
        assert copies
        for *sources, _dest in copies:
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such file"
                assert source.split("/")[0] not in ignored, f"{path.name}: COPY {source} is in .dockerignore"
        packages = {p.split("*")[0] for p in re.findall(r'include = \[([^\]]*)\]', (ROOT / "pyproject.toml").read_text())[0]
                    .replace('"', "").replace(" ", "").split(",")}
        copied = {s for *sources, _ in copies for s in sources}
        assert packages <= copied, f"{path.name} does not copy the packages {packages - copied}"


def test_server_image_is_slim_with_cpu_torch_first():
    import torch

    parser, instructions = dockerfile(SERVER_DOCKERFILE)
    assert parser.baseimage == "python:3.11-slim"
    assert parser.args["TORCH_VERSION"] == torch.__version__.split("+")[0], "the image's torch is the tested one"
    runs = [v for k, v in instructions if k == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if "torch==${TORCH_VERSION}" in r and "whl/cpu" in r)
    package_run = next(i for i, r in enumerate(runs) if re.search(r"pip install .*--constraint \S+ \.(\s|$)", r))
    assert torch_run < package_run
    cmd = ast.literal_eval(parser.cmd) if parser.cmd.startswith("[") else None
    assert cmd, "CMD in exec form"
    name, params = resolve(cmd)
    assert name == "server" and params["host"] == "0.0.0.0"


def test_worker_image_keeps_the_cuda_torch_of_its_base():
    parser, instructions = dockerfile(WORKER_DOCKERFILE)
    default = re.search(r"ARG TORCH_IMAGE=(\S+)", WORKER_DOCKERFILE.read_text()).group(1)
    assert re.fullmatch(r"pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime", default)
    assert default == env_example()["TORCH_IMAGE"]
    runs = " ".join(v for k, v in instructions if k == "RUN")
    assert "pip install --constraint" in runs and "torch==" in runs
    assert not re.search(r"pip install[^&]*\btorch\b(?!-constraint)", runs.replace("torch-constraint", "")), \
        "the worker image must not install torch itself"
    entry = ast.literal_eval(re.search(r"^ENTRYPOINT (.+)$", WORKER_DOCKERFILE.read_text(), re.M).group(1))
    copied = [shlex.split(v) for k, v in instructions if k == "COPY"]
    assert any(c[-1].endswith(entry[0]) and c[:-1] == [str(ENTRYPOINT.relative_to(ROOT))] for c in copied)
    cmd = ast.literal_eval(parser.cmd)
    name, params = resolve(cmd + entrypoint_extra_args())
    assert name == "worker"
    assert os.access(ENTRYPOINT, os.X_OK)


def test_python_snippets_in_dockerfiles_compile():
    for path in (SERVER_DOCKERFILE, WORKER_DOCKERFILE):
        _, instructions = dockerfile(path)
        for _, value in instructions:
            for snippet in re.findall(r'python -c "([^"]+)"', value):
                ast.parse(snippet.replace("${TORCH_VERSION}", "2.0"))


# ---- the worker entrypoint, run ------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy-server")
    process = ServerProcess(f"sqlite:///{tmp / 'mixopt.db'}", tmp / "server.log").start()
    yield process
    process.stop()


def run_entrypoint(server_url: str, slot_root: Path, fake_bin: Path, prefix: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{fake_bin}:{BIN}:{os.environ['PATH']}", "MIXOPT_SLOT_ROOT": str(slot_root),
           "MIXOPT_WORKER_PREFIX": prefix, "MIXOPT_JOIN_SECRET": "test-join-secret"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.Popen(["sh", str(ENTRYPOINT), "mixopt", "worker", "--url", server_url, "--executor", "synthetic",
                             "--max-trials", "0"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_entrypoint_gives_each_replica_a_slot_and_a_gpu(server, tmp_path):
    # Docker would show the GPUs through nvidia-smi; here a stand-in lists two.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-b)'\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    root = tmp_path / "workers"
    replicas = [run_entrypoint(server.url, root, fake_bin, "replica") for _ in range(3)]
    logs = [p.communicate(timeout=180)[0] for p in replicas]
    assert [p.returncode for p in replicas] == [0, 0, 0], logs
    slots = sorted(int(re.search(r"slot (\d+) ", log).group(1)) for log in logs)
    assert slots == [0, 1, 2]
    for log in logs:
        slot = int(re.search(r"slot (\d+) ", log).group(1))
        assert f"CUDA_VISIBLE_DEVICES={slot % 2}" in log
        assert (root / f"slot-{slot}" / "worker.json").exists()
    with MixoptClient(server.url) as api:
        names = sorted(w["name"] for w in api.list_workers() if w["name"].startswith("replica-"))
    assert names == ["replica-slot0", "replica-slot1", "replica-slot2"]

    # a recreated replica takes a free slot and its identity: no new registration
    again = run_entrypoint(server.url, root, fake_bin, "recreated")
    log = again.communicate(timeout=180)[0]
    assert again.returncode == 0 and "slot 0 " in log and "resumes as id" in log, log
    with MixoptClient(server.url) as api:
        assert not [w for w in api.list_workers() if w["name"].startswith("recreated")]

    # other commands run as they are
    other = subprocess.run(["sh", str(ENTRYPOINT), "mixopt", "db", "--help"], env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert other.returncode == 0 and "upgrade" in other.stdout and not (tmp_path / "workers" / "slot-3").exists()


# ---- Slurm ---------------------------------------------------------------------------------------

def sbatch_directives(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH "):].strip().partition("=")
            out[key] = value
    return out


def test_sbatch_is_a_job_array_of_one_gpu_workers():
    directives = sbatch_directives(SBATCH)
    assert re.fullmatch(r"\d+-\d+(%\d+)?", directives["--array"])
    assert directives["--gres"] == "gpu:1" and directives["--ntasks"] == "1"
    assert re.fullmatch(r"B:TERM@\d+", directives["--signal"]), "SIGTERM to the batch shell, which is the worker (exec)"
    text = SBATCH.read_text()
    assert "exec mixopt worker" in text and "SLURM_ARRAY_TASK_ID" in text
    for path in (SBATCH, SLURM_SERVER, ENTRYPOINT):
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_slurm_server_and_worker_array_run(tmp_path):
    """server.sh on a 'login node', then two array tasks of worker.sbatch with the environment
    Slurm gives them; they share the data dir (server URL and join secret) as on a cluster FS."""
    data_dir = tmp_path / "shared"
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MIXOPT_DATA_DIR": str(data_dir),
           "MIXOPT_HOST": "127.0.0.1", "MIXOPT_PORT": str(port), "MIXOPT_ADMIN_TOKEN": "slurm-admin-token",
           "MIXOPT_DATABASE_URL": f"sqlite:///{tmp_path / 'mixopt.db'}", "MIXOPT_SWEEP_INTERVAL_S": "0.5"}
    env.pop("MIXOPT_JOIN_SECRET", None)
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(["bash", str(SLURM_SERVER)], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = wait_for(lambda: (data_dir / "server-url").exists() and (data_dir / "server-url").read_text().strip(),
                       120, what="server-url")
        assert url == f"http://127.0.0.1:{port}"
        assert oct((data_dir / "join-secret").stat().st_mode & 0o777) == "0o600"

        def healthy():
            try:
                return MixoptClient(url).health()["status"] == "ok"
            except Exception:
                return False

        wait_for(healthy, 120, what="server health")
        with MixoptClient(url, token="slurm-admin-token") as api:
            study = api.create_study({
                "name": "slurm", "domains": [{"name": "a"}, {"name": "b"}],
                "fidelities": [{"name": "t", "cost": 1.0, "target": True}],
                "strategy": {"name": "random"}, "budget": {"max_trials": 4}, "parallelism": 4,
            }, start=True)
            with pytest.raises(ApiError) as refused:
                MixoptClient(url).get_study(study["id"])
            assert refused.value.status == 401  # auth is on

            tasks = []
            for task in (0, 1):
                task_env = {k: v for k, v in env.items() if k not in ("MIXOPT_PORT", "MIXOPT_HOST", "MIXOPT_DATABASE_URL")}
                task_env.update(SLURM_JOB_ID=str(100 + task), SLURM_ARRAY_JOB_ID="99", SLURM_ARRAY_TASK_ID=str(task),
                                SLURM_CPUS_PER_TASK="1", CUDA_VISIBLE_DEVICES=str(task))
                tasks.append(subprocess.Popen(
                    ["bash", str(SBATCH), "--executor", "synthetic", "--exit-when-idle", "3", "--poll-wait", "1"],
                    env=task_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            outputs = [t.communicate(timeout=300)[0] for t in tasks]
            assert [t.returncode for t in tasks] == [0, 0], outputs
            done = api.get_study(study["id"])
            workers = {w["name"]: w for w in api.list_workers()}
        assert done["trial_counts"]["completed"] == 4
        assert set(workers) == {"slurm-99-0", "slurm-99-1"}
        assert sum(w["completed_trials"] for w in workers.values()) == 4
        for task in (0, 1):
            assert (data_dir / "slurm-workers" / str(task) / "worker.json").exists()
            assert f"task {task} " in outputs[task] and f"CUDA_VISIBLE_DEVICES={task}" in outputs[task]
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    assert server.returncode in (0, -15), (tmp_path / "server.log").read_text()[-2000:]


def test_slurm_worker_without_server_url_says_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MIXOPT_URL"}
    out = subprocess.run(["bash", str(SBATCH)], env={**env, "MIXOPT_DATA_DIR": str(tmp_path)}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "MIXOPT_URL" in out.stderr


# ---- Kubernetes ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(K8S_WORKER.read_text())}


def test_k8s_manifest_validates_against_the_kubernetes_schemas(k8s):
    import kubernetes_validate

    assert set(k8s) == {"Secret", "ConfigMap", "Deployment"}
    for doc in k8s.values():
        kubernetes_validate.validate(doc, "1.31", strict=True)
    broken = yaml.safe_load(yaml.safe_dump(k8s["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.31", strict=True)


def test_k8s_workers_take_one_gpu_and_their_secret(k8s):
    spec = k8s["Deployment"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e for e in container["env"]}
    secret_ref = env["MIXOPT_JOIN_SECRET"]["valueFrom"]["secretKeyRef"]
    assert secret_ref["name"] == k8s["Secret"]["metadata"]["name"] and secret_ref["key"] in k8s["Secret"]["stringData"]
    url_ref = env["MIXOPT_URL"]["valueFrom"]["configMapKeyRef"]
    assert url_ref["name"] == k8s["ConfigMap"]["metadata"]["name"]
    assert urlparse(k8s["ConfigMap"]["data"][url_ref["key"]]).scheme == "http"

    argv = [*container["command"], *container["args"]]
    argv = [re.sub(r"\$\((\w+)\)", lambda m: "pod-0" if m.group(1) in env else m.group(0), a) for a in argv]
    assert "$(" not in " ".join(argv), "every $(VAR) must be a container env var"
    name, params = resolve(argv)
    assert name == "worker" and params["url"] is None  # the client reads MIXOPT_URL
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert str(params["state_dir"]) in mounts and str(params["cache_dir"]) in mounts
    assert not mounts[str(params["cache_dir"])].get("readOnly"), "preparing the corpus writes the cache"
    assert mounts[str(params["corpus"])]["readOnly"] is True
    assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)



def test_compose_metrics_profile_scrapes_the_server_and_the_dashboard_uses_real_series(compose):
    """Prometheus and Grafana start only with ``--profile metrics``; Prometheus scrapes the
    server's /metrics with the metrics token; every Grafana query names a series mixopt exports."""
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["profiles"] == ["metrics"]
    for name in ("postgres", "server", "worker"):
        assert "profiles" not in compose["services"][name]
    assert compose["services"]["server"]["environment"]["MIXOPT_METRICS_TOKEN"] == env_example()["MIXOPT_METRICS_TOKEN"]
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    assert job["static_configs"][0]["targets"] == ["server:8000"]
    assert "metrics-token" in job["authorization"]["credentials_file"]
    assert job["authorization"]["credentials_file"] in " ".join(compose["services"]["prometheus"]["entrypoint"])
    exported = set(re.findall(r'"(mixopt_[a-z_]+)"', (ROOT / "service" / "metrics.py").read_text()))
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "mixopt.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"mixopt_[a-z_]+", t["expr"])}
    suffixes = ("_bucket", "_count", "_sum", "_total")
    unknown = {m for m in used if m not in exported and not any(m.endswith(x) and m[: -len(x)] in exported for x in suffixes)}
    assert len(dashboard["panels"]) >= 10 and not unknown, unknown
