"""The cluster side of the sweep: the launcher YAMLs pass Ray's own config validation, the KubeRay manifests hold
together, and a real private Ray head on this machine (job server on loopback, token auth) runs jobs submitted
with `ray job submit`."""

import copy
import importlib.util
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import env_for_subprocess, process_tree

import dist_darts.cli
from dist_darts import config
from dist_darts.spaces.cnn import genotype as gt

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER_YAMLS = ["gpu-cloud.yaml", "on-prem.yaml"]
SHARED = "/shared"  # where every node and pod mounts the shared results storage

# the job test_job_submit runs; the sweep has its own test below
JOB_ENTRYPOINT = ["python", "-m", "dist_darts", "genotype", "show", "DARTS_V2"]
JOB_EXPECTED_OUTPUT = gt.format_genotype(gt.GENOTYPES["DARTS_V2"])
# what the job needs of the repository (ray_job_submit.sh uploads the same working dir with the same excludes)
JOB_RUNTIME_ENV = {"excludes": ["/.git/", "/data/", "/runs/", "/tests/fixtures/"],
                   "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}}
TINY_SWEEP = ["--seeds", "2", "--workers-per-trial", "1", "--cpus-per-worker", "0.5", "--search-epochs", "1",
              "--select-epochs", "1", "--final-epochs", "1", "--repeats", "1", "--dataset", "digits", "--layers", "3",
              "--init-channels", "4", "--batch-size", "16", "--steps-per-epoch", "2"]


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def load_all(name: str) -> dict:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((CLUSTER / name).read_text())}


def ray_start_commands(commands: list[str]) -> list[tuple[dict, list[str]]]:
    """(environment assignments, arguments) of every `ray start` in a list of shell command lines."""
    found = []
    for line in commands:
        for part in line.replace("&&", ";").split(";"):
            words = shlex.split(part)
            env = {}
            while words and "=" in words[0] and not words[0].startswith("-"):
                key, value = words.pop(0).split("=", 1)
                env[key] = value
            if words[:2] == ["ray", "start"]:
                found.append((env, words[2:]))
    return found


# --- cluster-launcher YAMLs --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_passes_ray_validation(name):
    """What `ray up` does to a config before it talks to a cloud: fill in defaults, then check against Ray's schema."""
    pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    raw = load(name)
    prepared = util.prepare_config(copy.deepcopy(raw))
    util.validate_config(prepared)
    if raw["provider"]["type"] == "local":
        # for on-premise machines `ray up`'s whole config step runs offline: do exactly that
        from ray.autoscaler._private.commands import _bootstrap_config
        prepared = _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)
        assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == len(
            raw["provider"]["worker_ips"])
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # and the validation is live: a misspelt key fails it
    broken = copy.deepcopy(prepared)
    broken["head_start_commands"] = broken.pop("head_start_ray_commands")
    with pytest.raises(Exception, match="head_start_commands"):
        util.validate_config(broken)


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_starts_ray_quiet_and_private(name):
    """Every `ray start` parses with Ray's own CLI; token auth and no usage stats everywhere, dashboard on loopback."""
    scripts = pytest.importorskip("ray.scripts.scripts")
    raw = load(name)
    for key, head in (("head_start_ray_commands", True), ("worker_start_ray_commands", False)):
        starts = ray_start_commands(raw[key])
        assert len(starts) == 1, key
        env, args = starts[0]
        params = scripts.start.make_context("ray start", list(args)).params  # raises on an unknown flag
        assert params["head"] is head
        assert params["disable_usage_stats"] is True
        assert env.get("RAY_AUTH_MODE") == "token" and env.get("RAY_USAGE_STATS_ENABLED") == "0"
        if head:
            assert "--dashboard-host=127.0.0.1" in args  # explicit: Ray's own example configs use 0.0.0.0
        else:
            assert params["address"] == "$RAY_HEAD_IP:6379"
    # every node and the submitting machine share one token; results go to the same path everywhere
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any(f"mountpoint -q {SHARED}" in c for c in raw["initialization_commands"])
    assert any("-c constraints.txt -e '.[all]'" in c for c in raw["setup_commands"])


def test_gpu_cloud_node_types():
    """Head without trials, 8-GPU workers, and node configs that are valid EC2 RunInstances parameters."""
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator
    raw = load("gpu-cloud.yaml")
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] == 8 and t["max_workers"] >= 1 for t in workers)
    assert sum(t.get("min_workers", 0) for t in types.values()) <= raw["max_workers"]
    # Ray hands node_config to EC2's RunInstances (adding the counts): check it against botocore's offline model
    shape = botocore_session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node_type in types.items():
        report = ParamValidator().validate(dict(node_type["node_config"], MinCount=1, MaxCount=1), shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
        assert node_type["node_config"]["InstanceType"] in shape.members["InstanceType"].enum
    assert f"-v {SHARED}:{SHARED}" in raw["docker"]["run_options"]
    assert raw["docker"]["image"].startswith("rayproject/ray:2.60.0-py311")


# --- KubeRay -----------------------------------------------------------------------------------------------

def pod_specs(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster_spec["workerGroupSpecs"]]


def test_kuberay_raycluster():
    docs = load_all("kuberay-raycluster.yaml")
    assert set(docs) == {"PersistentVolumeClaim", "RayCluster"}
    pvc, cluster = docs["PersistentVolumeClaim"], docs["RayCluster"]
    assert pvc["apiVersion"] == "v1" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert pvc["metadata"]["labels"]["dist-darts/part"] == "shared-storage"  # `kubectl apply -l` creates it alone
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == "2.60.0"
    images = set()
    for pod in pod_specs(spec):
        volumes = {v["name"]: v for v in pod["volumes"]}
        ray_container = pod["containers"][0]
        images.add(ray_container["image"])
        mounts = {m["mountPath"]: m["name"] for m in ray_container["volumeMounts"]}
        # the shared claim at the same path in the head and every worker
        assert volumes[mounts[SHARED]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"} in ray_container["env"]
    assert len(images) == 1
    for group in [spec["headGroupSpec"]] + spec["workerGroupSpecs"]:
        assert group["rayStartParams"]["disable-usage-stats"] == "true"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu_groups and all(g["maxReplicas"] >= 1 for g in gpu_groups)
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_kuberay_rayjob():
    job = load_all("kuberay-rayjob.yaml")
    assert set(job) == {"RayJob"}
    job = job["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    # the same cluster as kuberay-raycluster.yaml, shut down when the job is over
    assert spec["rayClusterSpec"] == load_all("kuberay-raycluster.yaml")["RayCluster"]["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] >= 1  # a retry runs on a new cluster and resumes from the shared folder
    entrypoint = spec["entrypoint"]
    assert "dist-darts sweep" in entrypoint and "--resume" in entrypoint
    argv = shlex.split(entrypoint.split("&&")[-1])
    assert argv[:2] == ["dist-darts", "sweep"]
    assert argv[argv.index("--output") + 1].startswith(SHARED + "/")


def test_kuberay_entrypoint_is_a_valid_sweep(monkeypatch):
    """The RayJob's command line parses with our CLI and its config file loads (paths as in the image's copy)."""
    entrypoint = load_all("kuberay-rayjob.yaml")["RayJob"]["spec"]["entrypoint"]
    argv = shlex.split(entrypoint.split("&&")[-1])
    monkeypatch.chdir(ROOT)
    args = dist_darts.cli.build_parser().parse_args(argv[1:])
    sweep = config.from_args(config.SweepConfig, args)
    assert sweep.resume and sweep.output.startswith(SHARED + "/")
    assert sweep.address == "auto"  # the job's cluster (RAY_ADDRESS), not a private runtime of its own
    assert sweep.data_dir.startswith(SHARED + "/")
    for stage_yaml in (sweep.search, sweep.retrain):
        assert config.load_yaml(stage_yaml)


# --- a real local head and `ray job submit` ----------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports (held open together, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _processes_of(session_id: int, folder: Path) -> list[int]:
    """Live processes of one Ray head: its session's, plus job drivers (Ray starts them in sessions of their own,
    working in a folder under the head's temp dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if os.getsid(pid) == session_id or str(folder) in os.readlink(f"/proc/{pid}/cwd"):
                pids.append(pid)
        except (OSError, IndexError):
            pass  # gone meanwhile, or not ours to look at
    return pids


def stop_head(head: subprocess.Popen, folder: Path) -> None:
    """Stop exactly the processes of this head, by id (`ray stop` would stop every Ray on the machine)."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        for pid in _processes_of(head.pid, folder):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline:
            head.poll()  # reap the head itself
            if not _processes_of(head.pid, folder):
                break
            time.sleep(0.2)
    head.wait(timeout=10)


class LocalHead:
    def __init__(self, folder: Path, address: str, env: dict, token_file: Path, process: subprocess.Popen):
        self.folder, self.address, self.env, self.token_file, self.process = folder, address, env, token_file, process

    @property
    def token(self) -> str:
        return self.token_file.read_text()

    def api(self, path: str, token: str | None = "own"):
        """GET the job server's REST API; (status, parsed body)."""
        request = urllib.request.Request(self.address + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {self.token if token == 'own' else token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or "null")
        except urllib.error.HTTPError as e:
            return e.code, None


def _job_server_up(node: LocalHead) -> bool:
    try:
        return node.api("/api/jobs/")[0] == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, FileNotFoundError):  # no token file yet either
        return False


@pytest.fixture(scope="module")
def local_head():
    """launch/ray_local_head.sh on free ports, with a temp dir and a token of its own; stopped by process id."""
    if shutil.which("ray") is None:
        pytest.skip("needs the ray command (pip install 'dist-darts[tune]')")
    if not Path("/proc").is_dir():
        pytest.skip("stopping the head by process id reads /proc (Linux)")
    ray_utils = pytest.importorskip("ray._private.utils")
    missing = getattr(ray_utils, "get_dashboard_dependency_error", lambda: None)()
    if missing or importlib.util.find_spec("aiohttp") is None:
        pytest.skip(f"`ray job submit` needs the job server: pip install 'ray[default]' ({missing})")
    # a short path: Ray's socket paths under it must stay within the 107 bytes a Unix socket name may have
    folder = Path(tempfile.mkdtemp(prefix="ddc-", dir="/tmp"))
    token_file = folder / "auth_token"  # the script generates it
    gcs, dashboard, client, agent = free_ports(4)
    env = env_for_subprocess()
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(name, None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0",
               RAY_PORT=str(gcs), RAY_DASHBOARD_PORT=str(dashboard), RAY_NUM_CPUS="2")
    with open(folder / "head.log", "w") as log:
        head = subprocess.Popen(
            [str(ROOT / "launch" / "ray_local_head.sh"), "start", "--block", f"--temp-dir={folder / 'ray'}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             "--include-dashboard=true"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    node = LocalHead(folder, f"http://127.0.0.1:{dashboard}", env, token_file, head)
    try:
        deadline = time.time() + 180
        while not _job_server_up(node):
            if head.poll() is not None or time.time() > deadline:
                raise AssertionError(f"no job server (ray start: {head.poll()}):\n"
                                     f"{(folder / 'head.log').read_text()[-4000:]}")
            time.sleep(0.5)
        yield node
    finally:
        stop_head(head, folder)
        shutil.rmtree(folder, ignore_errors=True)


def ray_cli(node: LocalHead, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["ray", *args], capture_output=True, text=True, env=env or node.env, timeout=300,
                          cwd=ROOT, check=False)


def test_job_server_is_private(local_head):
    """Loopback only, and nothing without the token: 401 without one, 403 with a wrong one."""
    assert local_head.api("/api/jobs/", token=None)[0] == 401
    assert local_head.api("/api/jobs/", token="0" * 64)[0] == 403
    from ray._private.services import get_node_ip_address
    ip = get_node_ip_address()
    if not ip.startswith("127."):
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(5)
            s.connect((ip, int(local_head.address.rsplit(":", 1)[1])))
    # `ray job submit` without RAY_AUTH_MODE=token sends no token, and is turned away
    env = dict(local_head.env)
    env.pop("RAY_AUTH_MODE")
    proc = ray_cli(local_head, "job", "list", "--address", local_head.address, env=env)
    assert proc.returncode != 0 and "Missing authentication token" in proc.stdout + proc.stderr


def listening_sockets(pids) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket that one of these processes holds, read from
    /proc/net/tcp{,6} and the processes' file descriptors."""
    listening = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)  # 32-bit words in host (little-endian) order
            ip = socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
            listening[int(fields[9])] = (ip, int(hex_port, 16))
    found = []
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()[:80]
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone meanwhile
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in listening:
                found.append((pid, name, *listening[int(target[8:-1])]))
    return found


# what docs/cluster.md ("Network exposure") names as listening beyond loopback: nothing, for both runtimes
DOCUMENTED_NON_LOOPBACK: set = set()


def exposed(sockets) -> list:
    def loopback(ip):
        address = ipaddress.ip_address(ip)
        mapped = getattr(address, "ipv4_mapped", None)
        return (mapped or address).is_loopback

    return [s for s in sockets if not loopback(s[2]) and s[1].split()[0] not in DOCUMENTED_NON_LOOPBACK]


def test_local_head_listens_on_loopback_only_and_keeps_its_token_private(local_head):
    assert oct(local_head.token_file.stat().st_mode & 0o777) == "0o600"
    sockets = listening_sockets(_processes_of(local_head.process.pid, local_head.folder))
    # the head's own servers are among them (how many agents are up yet depends on the machine's load)
    assert any("gcs" in exe for _, exe, _, _ in sockets), sockets
    assert not exposed(sockets), exposed(sockets)


# the sweep's private runtime, started exactly as `dist-darts sweep` starts it, with one task run on it
PRIVATE_RUNTIME = """
import sys
from dist_darts import config, tune
tune._init_ray(config.SweepConfig())  # imports Ray: the sweep decides its mode before Ray is imported
ray = tune.ray
ray.get(ray.remote(lambda: 1).options(num_cpus=0).remote())
print("up", flush=True)
sys.stdin.readline()
ray.shutdown()
"""


def test_the_sweeps_private_runtime_listens_on_loopback_only():
    if not Path("/proc/net/tcp").is_file():
        pytest.skip("lists sockets through /proc (Linux)")
    pytest.importorskip("ray")
    folder = tempfile.mkdtemp(prefix="ddr-", dir="/tmp")  # short: Ray's Unix socket paths go under it
    env = env_for_subprocess()
    for name in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(name, None)
    driver = subprocess.Popen([sys.executable, "-c", PRIVATE_RUNTIME], env=dict(env, RAY_TMPDIR=folder),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert driver.stdout.readline().strip() == "up"
        sockets = listening_sockets(process_tree(driver.pid))
        # the runtime's own servers are among them (how many agents are up yet depends on the machine's load)
        assert any("gcs" in exe for _, exe, _, _ in sockets) and any("ray/rayle" in exe for _, exe, _, _ in sockets), sockets
        assert not exposed(sockets), exposed(sockets)
    finally:
        driver.stdin.close()
        driver.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_job_submit(local_head):
    submission_id = f"dd-{secrets.token_hex(4)}"
    proc = ray_cli(local_head, "job", "submit", "--address", local_head.address, "--submission-id", submission_id,
                   "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(JOB_RUNTIME_ENV),
                   "--", *JOB_ENTRYPOINT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert JOB_EXPECTED_OUTPUT in out
    status, info = local_head.api(f"/api/jobs/{submission_id}")
    assert status == 200 and info["status"] == "SUCCEEDED", info
    status, logs = local_head.api(f"/api/jobs/{submission_id}/logs")
    assert status == 200 and JOB_EXPECTED_OUTPUT in logs["logs"]


@pytest.mark.slow
def test_job_submit_sweep(local_head):
    """launch/ray_job_submit.sh runs a tiny 2-seed sweep on the local head, through all three stages."""
    output = local_head.folder / "sweep"  # absolute: the job runs in a copy of the repository
    env = dict(local_head.env, RAY_ADDRESS=local_head.address)
    proc = subprocess.run([str(ROOT / "launch" / "ray_job_submit.sh"), *TINY_SWEEP, "--output", str(output)],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    report = json.loads((output / "report.json").read_text())
    assert len(report["trials"]) == 2
    assert report["winner"]["seed"] in {0, 1}
    assert "mean" in report["final"]


@pytest.mark.slow
def test_a_sweeps_trials_listen_on_loopback_only_their_rendezvous_store_included(tmp_path):
    """A demo-sized sweep with 2 DDP workers per trial: every listening socket of the driver's process tree,
    sampled while it runs (the Ray Train workers' torch.distributed store among them), is on loopback."""
    if not Path("/proc/net/tcp").is_file():
        pytest.skip("lists sockets through /proc (Linux)")
    pytest.importorskip("ray")
    folder = tempfile.mkdtemp(prefix="ddr-", dir="/tmp")
    env = env_for_subprocess()
    for name in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "dist_darts", "sweep", "--seeds", "1", "--dataset", "digits", "--layers", "3",
           "--init-channels", "4", "--batch-size", "8", "--steps-per-epoch", "40", "--search-epochs", "1",
           "--select-epochs", "1", "--final-epochs", "1", "--workers-per-trial", "2", "--cpus-per-worker", "0.5",
           "--max-failures", "0", "--output", str(tmp_path / "sweep")]
    driver = subprocess.Popen(cmd, env=dict(env, RAY_TMPDIR=folder), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = set()
    try:
        while driver.poll() is None:
            seen.update(listening_sockets(process_tree(driver.pid)))
            time.sleep(0.2)
        output = driver.stdout.read()
        assert driver.returncode == 0, output[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        shutil.rmtree(folder, ignore_errors=True)
    trainers = {s for s in seen if "RayTrainWorker" in s[1]}
    assert trainers, seen  # sampled while the trials trained
    # rank 0 of a 2-worker trial holds the store besides its Ray server: more than one listening socket
    assert any(sum(t[0] == pid for t in trainers) > 1 for pid, *_ in trainers), trainers
    assert not exposed(seen), exposed(seen)
