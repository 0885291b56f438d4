"""The fleet file's schema: every knob a host can set, with its default and why.

This module is the public interface of gpufleet. A setting can be given fleet-wide
(`[settings]`), per group (`[groups.NAME.settings]`) or per host
(`[groups.NAME.hosts.HOST.settings]`); the most specific wins, tables merge key by key.
docs/settings.md lists these settings in the same order (generated: tools/settings_doc.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, HttpUrl

from inventory import validation
from inventory.catalog import Precision


class Strict(BaseModel):
    """Unknown keys are mistakes (a typo silently ignored is a 3 a.m. outage).

    Types are strict too: "8" is not a number, 1 is not `true`, "yes" is not a boolean. An
    integer is still accepted where a float is expected (no information is lost). nan and inf
    (which TOML allows) are refused for every float. Callers holding text from a command line
    validate with `Settings.model_validate(values, strict=False)`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# --- constrained values: each names its check (inventory/validation.py) ----------------------
AbsolutePath = Annotated[str, AfterValidator(validation.absolute_posix_path)]
WeightsFolder = Annotated[str, AfterValidator(validation.absolute_posix_path),
                          AfterValidator(validation.weights_folder)]
Fingerprint = Annotated[str, AfterValidator(validation.fingerprint)]
UrlTemplate = Annotated[str, AfterValidator(validation.url_template)]
ProxyUrl = Annotated[HttpUrl, BeforeValidator(validation.proxy_text)]
HttpUrlText = Annotated[HttpUrl, BeforeValidator(validation.http_url_text)]
NoProxyEntry = Annotated[str, AfterValidator(validation.no_proxy_entry)]
ImageReference = Annotated[str, AfterValidator(validation.image_reference)]
Registry = Annotated[str, AfterValidator(validation.registry)]
Revision = Annotated[str, AfterValidator(validation.revision)]
IpAddress = Annotated[str, AfterValidator(validation.ip_address)]
HostName = Annotated[str, AfterValidator(validation.host_name)]
ServedName = Annotated[str, AfterValidator(validation.served_name)]
InterfaceName = Annotated[str, AfterValidator(validation.interface)]
PrivateIpv4 = Annotated[str, AfterValidator(validation.private_ipv4)]
Duration = Annotated[str, AfterValidator(validation.duration)]
BatchSize = Annotated[int | str, AfterValidator(validation.batch)]
Target = Annotated[str, AfterValidator(validation.target)]
UserName = Annotated[str, AfterValidator(validation.user_name)]


# --- expected hardware ----------------------------------------------------------------------
class ExpectedGpus(Strict):
    """What the host should have; verification fails when nvidia-smi disagrees."""

    count: int | None = Field(
        default=None, ge=1, le=64,
        description="how many GPUs the host should have; a mismatch is an error")
    # Substring of the nvidia-smi name, e.g. "H100 80GB HBM3" or "A100".
    model: str | None = Field(
        default=None,
        description="the GPU model the host should have; a mismatch is an error")
    # Minimum memory per GPU in GiB (nvidia-smi reports a little under the marketing size).
    memory_gib: float | None = Field(
        default=None, gt=0,
        description="the memory per GPU the host should have; a mismatch is an error")


# --- storage of model weights ---------------------------------------------------------------
class StorageSettings(Strict):
    # require: refuse weights on HDD, network or overlay storage; warn: report only; off: skip.
    policy: Literal["require", "warn", "off"] = Field(
        default="require",
        description="`require`: weights on HDD, network or overlay storage refused; `warn`; "
                    "`off`")
    # Free space wanted at weights_path, as a multiple of the model's size on disk.
    free_space_margin: float = Field(
        default=1.2, ge=1.0, le=10.0,
        description="free space wanted, as a multiple of the weights' size")
    # Measure sequential read speed of a file under weights_path (O_DIRECT, time-bounded).
    measure_read_speed: bool = Field(
        default=False,
        description="a time-bounded O_DIRECT read of a file under the weights path, with the "
                    "load-time estimate")
    measure_seconds: int = Field(
        default=10, ge=1, le=120,
        description="how long the read-speed measurement may take")


# --- apt repositories -----------------------------------------------------------------------
class AptRepo(Strict):
    """An apt repository: where it is and which key signs it.

    Leave `url` unset for NVIDIA's official repository. Set it to use a mirror; the URL may use
    `{distro}` (ubuntu2204, debian12, ...) and `{arch}` (x86_64 / sbsa for CUDA,
    amd64 / arm64 for the container toolkit) placeholders.
    """

    url: UrlTemplate | None = Field(
        default=None,
        description="the apt repository (may use `{distro}`, `{arch}`): for a mirror. Unset: "
                    "NVIDIA's")
    key_url: UrlTemplate | None = Field(
        default=None,
        description="where the repository's signing key is downloaded from. Unset: NVIDIA's")
    # The key's fingerprint is checked before the keyring is installed, so a mirror cannot
    # substitute its own key unnoticed.
    key_fingerprint: Fingerprint | None = Field(
        default=None,
        description="the fingerprint the repository's signing key must have. Unset: NVIDIA's")


class RepoSettings(Strict):
    cuda: AptRepo = AptRepo()
    container_toolkit: AptRepo = AptRepo()


APT_LOCK_TIMEOUT_SECONDS = 300


class AptSettings(Strict):
    # Package lists older than this are refreshed before anything is installed from them.
    # (They are always refreshed when the sources, their keys or the pins change.)
    lists_max_age_seconds: int = Field(
        default=3600, ge=0, le=7 * 86400,
        description="package lists older than this are refreshed before anything is installed "
                    "(they always are when sources, keys or pins change)")
    # How long each apt/dpkg command waits for another process's lock (unattended-upgrades
    # or cloud-init on a fresh host) before the host fails, naming the holder.
    lock_timeout_seconds: int = Field(
        default=APT_LOCK_TIMEOUT_SECONDS, ge=0, le=3600,
        description="how long each apt-get, apt-mark or dpkg command waits for another "
                    "process's apt/dpkg lock (unattended-upgrades, cloud-init) before the "
                    "host fails, naming the holder (0-3600)")


# --- network: proxies and private CAs -------------------------------------------------------
class NetworkSettings(Strict):
    http_proxy: ProxyUrl | None = Field(
        default=None,
        description="the proxy for http downloads (apt, key downloads, pip): "
                    "`http(s)://[user:password@]host[:port]`; kept in root-only files on the "
                    "host, never on a command line")
    https_proxy: ProxyUrl | None = Field(
        default=None,
        description="the proxy for https downloads, as `http_proxy`")
    no_proxy: list[NoProxyEntry] = Field(
        default_factory=list,
        description="host names, `.domain` suffixes, IP addresses or CIDRs reached without "
                    "the proxy")
    # A PEM file on the controller, trusted on the host in addition to the system CAs
    # (corporate TLS-intercepting proxies, private mirrors). Relative paths are taken from
    # the fleet file's folder.
    extra_ca_bundle: str | None = Field(
        default=None,
        description="a PEM file on the controller, trusted on the host (TLS-intercepting "
                    "proxies, private mirrors); removed from the host when unset again")


# --- NVIDIA driver --------------------------------------------------------------------------
class DriverSettings(Strict):
    # if-needed: reboot after a driver change, when nouveau is still loaded or the loaded
    # module differs from the installed driver; one host of a group at a time.
    # never: report that a reboot is needed and leave it to you.
    reboot: Literal["never", "if-needed"] = Field(
        default="if-needed",
        description="`if-needed`: reboot after a driver change, one host at a time; `never`")
    reboot_timeout_seconds: int = Field(
        default=900, ge=60, le=7200,
        description="how long to wait for a host to come back")


# --- Docker engine --------------------------------------------------------------------------
# daemon.json keys that gpufleet owns or that open the host: daemon_json may set them only when
# daemon_json_unchecked names them (DockerSettings.daemon_json_problems says why each).
GuardedDaemonKey = Literal["hosts", "tls", "tlsverify", "runtimes", "default-runtime",
                           "exec-opts", "features", "registry-mirrors", "insecure-registries",
                           "authorization-plugins"]


class DockerSettings(Strict):
    # Make nvidia the default runtime (every container sees GPUs without --gpus).
    default_runtime_nvidia: bool = Field(
        default=False,
        description="make `nvidia` Docker's default runtime")
    # Keep GPU containers attached to their devices across `systemctl daemon-reload`:
    # cgroupfs moves Docker off the systemd cgroup driver; cdi uses CDI device injection.
    gpu_device_protection: Literal["cgroupfs", "cdi", "none"] = Field(
        default="cgroupfs",
        description="keep GPU containers' devices across `systemctl daemon-reload`: "
                    "`cgroupfs`, `cdi` or `none`")
    registry_mirrors: list[HttpUrlText] = Field(
        default_factory=list,
        description="registry mirrors for dockerd")
    # Escape hatch: keys merged into /etc/docker/daemon.json as given. Keys gpufleet owns or
    # that open the host (GuardedDaemonKey) are refused, unless named in daemon_json_unchecked.
    daemon_json: Annotated[dict[str, object], AfterValidator(validation.json_object)] = Field(
        default_factory=dict,
        description="extra keys merged into `/etc/docker/daemon.json` (yours are never "
                    "removed; gpufleet records what it set and gives it back when the fleet "
                    "stops asking). Refused, because gpufleet owns them or they open the "
                    "host: `hosts` (Docker's API on TCP is root for whoever reaches it), "
                    "`tls`/`tlsverify` = `false`, `runtimes.nvidia`, `default-runtime` (use "
                    "`docker.default_runtime_nvidia`), `registry-mirrors` (use "
                    "`docker.registry_mirrors`), `exec-opts` with a `native.cgroupdriver` "
                    "contradicting `gpu_device_protection` (under `cgroupfs` the list must "
                    "keep `native.cgroupdriver=cgroupfs`, since it replaces gpufleet's), "
                    "`features.cdi = false` under `cdi`, `insecure-registries`, "
                    "`authorization-plugins`")
    # For experts: the guarded daemon_json keys you take responsibility for, by name (e.g.
    # ["hosts", "tls"] for a TCP socket you secure yourself). Each is warned about at every
    # preflight; naming a key daemon_json does not set, or does not need, is an error.
    daemon_json_unchecked: list[GuardedDaemonKey] = Field(
        default_factory=list,
        description="for experts: the refused `daemon_json` keys you take responsibility for, "
                    "by name (e.g. `[\"hosts\", \"tls\"]` for a TCP socket you secure yourself). "
                    "Each is then written as given and warned about at every preflight "
                    "(`daemon-json-unchecked`); a name `daemon_json` does not need is an "
                    "error, so the list stays exact")

    def daemon_json_problems(self) -> list[tuple[str, object, str]]:
        """(key, value, why) for each daemon_json key that would undo what gpufleet guarantees
        or open the host, whether or not daemon_json_unchecked accepts it. Checked on a host's
        merged settings (inventory/fleet.py): the override may be set at another level."""
        found: list[tuple[str, object, str]] = []
        for key, value in self.daemon_json.items():
            why = validation.guarded_daemon_key_problem(key, value, self.gpu_device_protection)
            if why:
                found.append((key, value, why))
        return found


# --- Python environment for host-side tooling -----------------------------------------------
class PythonEnvSettings(Strict):
    enabled: bool = Field(default=True, description="build the locked Python environment")
    path: AbsolutePath = Field(
        default="/opt/gpufleet/venv",
        description="where the locked Python environment lives on the host")
    # A PyPI mirror (simple index). Unset: pip's default index.
    index_url: HttpUrlText | None = Field(
        default=None,
        description="a PyPI mirror. Unset: pip's default")
    # Fetch the locked wheels once on the controller and push them to every host.
    wheelhouse: bool = Field(
        default=False,
        description="fetch the locked wheels once on the controller and push them to hosts")


# --- verification ---------------------------------------------------------------------------
class VerifySettings(Strict):
    # Image used to prove a GPU container starts (runs nvidia-smi inside it).
    gpu_test_image: ImageReference = Field(
        default="nvidia/cuda:12.1.1-base-ubuntu22.04",
        description="image used to prove a GPU container runs; without `@sha256:` preflight "
                    "warns `image-not-pinned`")
    # Image archives (docker save) on the controller, loaded on hosts that lack the image:
    # for air-gapped sites and sites without registry access.
    image_archives: list[str] = Field(
        default_factory=list,
        description="`docker save` archives on the controller, loaded on hosts lacking the "
                    "image")


# --- model weights --------------------------------------------------------------------------
class WeightsSettings(Strict):
    # Where the weights at weights_path come from:
    #   present: already there (put there by you); controller: pushed from a folder on the
    #   controller (resumable); hub: downloaded on the host at a pinned revision.
    # Every source ends with a check against a manifest stored beside the weights.
    source: Literal["present", "controller", "hub"] = Field(
        default="present",
        description="where the weights come from: `present` (found on the host), `controller` "
                    "(`controller_path`), `hub` (`hub_endpoint`, `revision`, `token_file`)")
    # source = controller: the folder on the controller (relative: from the fleet file).
    controller_path: str | None = Field(
        default=None,
        description="the weights folder on the controller, pushed to hosts (`source = "
                    "\"controller\"`)")
    # source = hub: the hub's address (the public hub or your mirror), a commit id, and a file
    # on the controller holding the token (copied to the host 0600, never printed).
    # https:// only, unless allow_plain_http = true (a mirror on a trusted network: the token
    # and the weights then cross it readable; preflight warns, weights-plain-http). Checked
    # against each other once the layers are merged (rules.fleet_checks).
    hub_endpoint: HttpUrlText | None = Field(
        default=None,
        description="the model hub to download from (`source = \"hub\"`; https)")
    allow_plain_http: bool = Field(
        default=False,
        description="let `hub_endpoint` be `http://` (warned: the token and weights travel "
                    "readable)")
    revision: Revision | None = Field(
        default=None,
        description="the hub revision (a commit) to download (`source = \"hub\"`)")
    token_file: str | None = Field(
        default=None,
        description="a file on the controller holding the hub token (root-only on the host, "
                    "only to download)")
    # quick: every file's size and mtime against the last full check (sha256 again only for
    # files that changed); full: sha256 of every file on every run.
    verify: Literal["quick", "full"] = Field(
        default="quick",
        description="`quick`: hash again only files whose size, mtime or ctime moved; `full`: "
                    "every file, every run")


# --- the inference stack -------------------------------------------------------------------
class InferenceSettings(Strict):
    # Serve the model after the host stack: Compose under systemd, proven by a completion.
    enabled: bool = Field(default=True, description=(
        "serve the model; false on a host that served stops its engine (weights, image and "
        "unit file stay), and with it the DCGM exporter that runs beside it"))
    engine: Literal["vllm", "sglang"] = Field(
        default="vllm",
        description="the engine: `vllm` or `sglang`")
    # Engine processes per host, each on its own GPUs and port. Unset: as many as the host's
    # GPUs hold at the tensor x pipeline parallel size the sizing chose.
    replicas: int | None = Field(
        default=None, ge=1, le=64,
        description="engine processes per host, each on its own GPUs. Unset: as many as the "
                    "GPUs hold")
    # The first replica's port; replica N (from 0) listens on port + N.
    port: int = Field(
        default=8000, ge=1024, le=65000,
        description="replica N listens on `port + N`")
    # Where the API listens. Loopback unless a gateway or firewall is in front.
    bind: IpAddress = Field(default="127.0.0.1", description="the address the replicas listen on")
    # The model name clients send. Unset: the model's id.
    served_model_name: ServedName | None = Field(
        default=None,
        description="the name clients send. Unset: the model id")
    # A file on the controller holding the API key, copied to the host 0600 and handed to the
    # engine through its environment (never in the compose file, never printed). Unset: none.
    api_key_file: str | None = Field(
        default=None,
        description="a file on the controller holding the API key: one line, at least 32 of "
                    "`A-Z a-z 0-9 . _ ~ + / = -` (0600 on the host). Unset with `bind` beyond "
                    "loopback: a key generated once per fleet, "
                    "`~/.config/gpufleet/keys/<fleet name>.api-key` (0600)")
    # Sequences a replica runs at once (--max-num-seqs). Unset: what the KV cache holds at the
    # context length (the sizing's concurrency).
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=4096,
        description="sequences per replica at once. Unset: `concurrency`")
    # Let the engine run the modeling code the model's repository ships (--trust-remote-code),
    # for a model the image's transformers does not know natively (DeepSeek-V3/R1 before
    # transformers 4.51). That code runs with the engine's rights: review it at the pinned
    # settings.weights.revision before turning this on. Preflight says when it is needed.
    trust_remote_code: bool = Field(
        default=False,
        description="let the engine run the modeling code the model's repository ships "
                    "(`--trust-remote-code`); preflight refuses a model the image's "
                    "transformers does not know natively until it is set")
    # Quantization of pre-quantized weights (--quantization), e.g. "awq", "gptq", "fp8".
    quantization: Literal["awq", "gptq", "fp8", "awq_marlin", "gptq_marlin"] | None = Field(
        default=None,
        description="the method of pre-quantized weights (`awq`, `gptq`, `fp8`, ...); needed "
                    "for int8/int4")
    # Container ulimits. memlock -1 is what RDMA (NCCL over InfiniBand) needs; a host that
    # cannot grant it (some container sandboxes) sets {}.
    ulimits: dict[str, int] = Field(
        default_factory=lambda: {"memlock": -1,
                                                              "stack": 67108864},
        description="container ulimits (RDMA needs memlock); `{}` where they cannot be "
                    "granted")
    # Another image than the pin set's (a mirror, or one loaded from image_archives), with the
    # same engine, version and CUDA: repository:tag, optionally @sha256:digest.
    image: ImageReference | None = Field(
        default=None,
        description="another image with the same engine (a mirror). Unset: the pin set's")
    # `docker save` archives on the controller, loaded on hosts that lack the image.
    image_archives: list[str] = Field(
        default_factory=list,
        description="`docker save` archives of the serving image, for hosts without registry "
                    "access")
    # Seconds the engine may take to load before its health check counts failures. Unset:
    # twice the estimated load time of the weights, at least 300.
    start_seconds: int | None = Field(
        default=None, ge=30, le=7200,
        description="how long an engine may load before its health check counts. Unset: 2 x "
                    "the load time, at least 300")
    # Which side of a canary rollout this host's replicas serve: the gateway sends
    # settings.canary.weight % of requests to "canary" hosts once `canary start` ran.
    variant: Literal["stable", "canary"] = Field(
        default="stable",
        description="`canary`: this host's replicas get `canary.weight` % of the gateway's "
                    "traffic once `canary start` ran")


# --- a replica across hosts ------------------------------------------------------------------
class MultiNodeSettings(Strict):
    # Hosts per replica. 1: every host serves on its own. N > 1: a group's hosts, in the order
    # the fleet file lists them, form replicas of N hosts each; the first of each is the head
    # (Ray's head for vLLM, rank 0 for SGLang), the only one that serves the API.
    nodes: int = Field(
        default=1, ge=1, le=64,
        description="hosts per replica: N > 1 takes a group's hosts N at a time, in the order "
                    "listed, the first the head")
    # The private interface the nodes talk over (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME).
    interface: InterfaceName | None = Field(
        default=None,
        description="the private interface the nodes talk over (NCCL/Gloo)")
    # This host's IPv4 address on that interface (VLLM_HOST_IP, Ray's --node-ip-address):
    # set per host.
    address: PrivateIpv4 | None = Field(
        default=None,
        description="this host's IPv4 address on `interface` (set per host; private ranges "
                    "only)")
    # The head's rendezvous port: Ray's GCS port (vLLM), --dist-init-addr's port (SGLang).
    # Unset: 6379 for vLLM, 5000 for SGLang (their documentation's).
    port: int | None = Field(
        default=None, ge=1024, le=65000,
        description="the head's rendezvous port. Unset: 6379 (vLLM) or 5000 (SGLang)")
    # How long the head waits for every node to join before it gives up, naming the missing.
    join_timeout_seconds: int = Field(
        default=600, ge=30, le=7200,
        description="how long the head waits for every node")
    # InfiniBand HCAs NCCL may use (NCCL_IB_HCA, e.g. "mlx5"). Set: /dev/infiniband must exist
    # on every node and the containers get it, IPC_LOCK and unlimited memlock. Unset: NCCL
    # picks its transport itself (sockets over the interface when there is no InfiniBand).
    infiniband_hca: str | None = Field(
        default=None, pattern=r"^\^?=?[A-Za-z0-9_,:]{1,64}$",
        description="`NCCL_IB_HCA` (e.g. `mlx5`): `/dev/infiniband`, IPC_LOCK and memlock for "
                    "the nodes")


# --- monitoring, the gateway and the canary -------------------------------------------------
class AlertSettings(Strict):
    # Time to first token, P99 over 5 minutes, per replica (the brief's "P99 above 500 ms";
    # see rules/monitoring.py for why TTFT and not end-to-end latency).
    ttft_p99_seconds: float = Field(
        default=0.5, gt=0.0, le=600.0,
        description="alert when a replica's time to first token, P99 over 5 minutes, is above "
                    "this")
    ttft_for: Duration = Field(
        default="2m",
        description="how long the TTFT alert's condition must hold")
    gpu_memory_percent: float = Field(
        default=95.0, gt=0.0, le=100.0,
        description="alert when a GPU's memory use is above this percentage")
    gpu_memory_for: Duration = Field(
        default="5m",
        description="how long the GPU memory alert's condition must hold")
    kv_cache_percent: float = Field(
        default=90.0, gt=0.0, le=100.0,
        description="alert when a replica's KV cache use is above this percentage")
    kv_cache_for: Duration = Field(
        default="10m",
        description="how long the KV cache alert's condition must hold")
    requests_waiting: int = Field(
        default=32, ge=1, le=100000,
        description="alert when this many requests wait in a replica's queue")
    requests_waiting_for: Duration = Field(
        default="5m",
        description="how long the waiting-requests alert's condition must hold")
    engine_down_for: Duration = Field(
        default="1m",
        description="how long an engine may be down before its alert fires")
    # A webhook Alertmanager posts alerts to (Slack/PagerDuty bridges, ...). Unset: alerts
    # show in Alertmanager only.
    webhook_url: HttpUrlText | None = Field(
        default=None,
        description="a webhook Alertmanager posts alerts to. Unset: alerts show in "
                    "Alertmanager only")


class MonitoringSettings(Strict):
    # Exporters on GPU hosts (node_exporter, DCGM exporter) and, on the monitoring host,
    # Prometheus + Alertmanager. Off: none of it, and the host is not scraped.
    enabled: bool = Field(
        default=True,
        description="exporters on GPU hosts, in a fleet with a monitoring host")
    # GPU hosts: the address the exporters listen on. Loopback keeps them private, but then no
    # other host can scrape them: give the host's address on the monitoring network.
    bind: IpAddress = Field(default="127.0.0.1", description="where a GPU host's exporters listen")
    # How the monitoring host reaches this host: an IP address or DNS name (it is written into
    # Prometheus's targets and the gateway's nginx configuration). Unset: the bind address
    # when it is a real one, else the SSH target (or the container name of an @docker target).
    address: HostName | None = Field(
        default=None,
        description="how the monitoring host reaches this host. Unset: from `bind` or the "
                    "target")
    node_exporter_port: int = Field(
        default=9100, ge=1024, le=65000,
        description="node_exporter's port")
    dcgm_exporter_port: int = Field(
        default=9400, ge=1024, le=65000,
        description="the DCGM exporter's port")
    # The registry the DCGM exporter image is pulled from, prefixed to the pin file's image
    # name: NVIDIA's NGC container registry (its host name, as NVIDIA's DCGM exporter
    # documentation gives it) or a mirror of it. The image is not on Docker's default
    # registry, so a monitored fleet must set this or image_archives (rules/monitoring.py).
    dcgm_registry: Registry | None = Field(
        default=None,
        description="the registry the DCGM exporter image is pulled from (NVIDIA's NGC "
                    "registry or your mirror of it); a monitored fleet sets this or "
                    "`image_archives`")
    # `docker save` archives on the controller holding the DCGM exporter image.
    image_archives: list[str] = Field(
        default_factory=list,
        description="`docker save` archives of the DCGM exporter image")
    # The monitoring host: where Prometheus (9090) and Alertmanager (9093) listen.
    listen: IpAddress = Field(
        default="127.0.0.1",
        description="where Prometheus (9090) and Alertmanager (9093) listen on the monitoring "
                    "host")
    scrape_interval: Duration = Field(
        default="15s",
        description="Prometheus' scrape and rule interval")
    retention: Duration = Field(default="15d", description="how long Prometheus keeps data")
    alerts: AlertSettings = AlertSettings()


class GatewaySettings(Strict):
    # The monitoring host's nginx in front of every replica of the fleet.
    enabled: bool = Field(
        default=True,
        description="nginx on the monitoring host in front of every replica")
    bind: IpAddress = Field(default="127.0.0.1", description="the address the gateway listens on")
    port: int = Field(default=8080, ge=1, le=65000, description="the gateway's port")
    # Reasoning models think for minutes before the first token: the proxy must wait.
    read_timeout_seconds: int = Field(
        default=1800, ge=10, le=86400,
        description="how long the gateway waits for a token (reasoning models think for "
                    "minutes)")


class CanarySettings(Strict):
    # Percent of requests the gateway sends to canary hosts once `canary start` ran.
    weight: int = Field(
        default=20, ge=1, le=99,
        description="percent of requests to canary hosts while a canary runs")
    # `canary status` over this window says "roll back" when the canary is worse than:
    window: Duration = Field(default="5m", description="the window `canary status` compares over")
    max_error_rate: float = Field(
        default=0.01, ge=0.0, le=1.0,
        description="`canary status` says roll back above this error rate")
    max_ttft_ratio: float = Field(
        default=1.5, ge=1.0, le=100.0,
        description="`canary status` says roll back when the canary's P99 time to first token "
                    "is above this multiple of the stable's")  # canary P99 / stable P99
    min_tokens_ratio: float = Field(
        default=0.8, gt=0.0, le=1.0,
        description="`canary status` says roll back when the canary's tokens per second are "
                    "below this share of the stable's")  # canary tokens/s / stable
    # Requests the canary must have answered in the window before any verdict but "hold".
    min_requests: int = Field(
        default=50, ge=1, le=1000000,
        description="requests the canary must have answered in the window before any verdict "
                    "but \"hold\"")
    # `canary status` rolls back by itself when the verdict is "roll back".
    auto_rollback: bool = Field(
        default=False,
        description="`canary status` rolls back by itself when its verdict is \"roll back\"")


class RolloutSettings(Strict):
    # Hosts of a group converged at a time by tools/rollout.py: a count, or a percentage of
    # the group ("25%", rounded up). Each batch is drained from the gateway first, converged
    # (its reboots together), checked, and put back.
    batch: BatchSize = Field(
        default=1,
        description="hosts of the group `tools/rollout.py` converges at a time: a count, or a "
                    "percentage (`\"25%\"`)")


# --- preflight ------------------------------------------------------------------------------
class PreflightSettings(Strict):
    # Turn these preflight errors (by code, or "all") into warnings: for people who know better.
    downgrade_errors: list[str] = Field(
        default_factory=list,
        description="preflight error codes (or `\"all\"`) to accept as warnings")
    # For a fleet whose hosts cannot be otherwise (the simulator's overlayfs disks); a real
    # fleet leaves it empty and sees them in full.
    expected_warnings: list[str] = Field(
        default_factory=list,
        description="warning codes this fleet expects: preflight says them in one line "
                    "(`expected <expected_because>: CODE, ...`) instead of in full")
    expected_because: str = Field(
        default="in this fleet", min_length=1, max_length=80, pattern=r"^[^\x00-\x1f\x7f]+$",
        description="the reason shown with the expected warnings")


# --- generation defaults --------------------------------------------------------------------
class SamplingSettings(Strict):
    # DeepSeek-R1's model card recommends 0.6 / 0.95; below ~0.3 output repeats, above ~1.2
    # it rambles (preflight warns).
    temperature: float = Field(
        default=0.6, ge=0.0, le=2.0,
        description="the checks' completions' temperature (DeepSeek-R1's recommendation); "
                    "extremes are warned")
    top_p: float = Field(
        default=0.95, gt=0.0, le=1.0,
        description="the checks' completions' top_p (DeepSeek-R1's recommendation); extremes "
                    "are warned")


class Settings(Strict):
    """Everything a host needs to know. Only `weights_path` has no default."""

    # "gpu": an inference host (the whole stack). "monitor": Prometheus, Alertmanager and the
    # gateway for the fleet's GPU hosts (no GPU needed; GPU settings are ignored there).
    role: Literal["gpu", "monitor"] = Field(
        default="gpu",
        description="`gpu`: a GPU host; `monitor`: a GPU-less host running Prometheus, "
                    "Alertmanager and the gateway for the fleet")
    pin_set: str = Field(
        default="r535-cuda121",
        description="the set of versions from `inventory/pins.toml`")
    model: str = Field(
        default="deepseek-r1-distill-qwen-7b",
        description="a model id from the catalog or `[models.NAME]`")
    precision: Precision = Field(
        default="bf16",
        description="the weights' precision: `bf16`, `fp16`, `fp8`, `int8` or `int4`")
    # Unset: the smallest tensor-parallel size that fits on the host's GPUs.
    tensor_parallel: int | None = Field(
        default=None, ge=1, le=64,
        description="GPUs per replica (divides the attention heads; for GQA models the KV "
                    "heads too, or is a multiple of them). Unset: the smallest that fits")
    pipeline_parallel: int = Field(default=1, ge=1, le=64, description="pipeline stages")
    # Unset: the model's own maximum context length.
    context_length: int | None = Field(
        default=None, ge=256,
        description="tokens per sequence to size for (at most the model's maximum). Unset: "
                    "the model's maximum, capped at 32768")
    # Concurrent sequences the KV cache must hold at full context.
    concurrency: int = Field(
        default=8, ge=1, le=4096,
        description="concurrent sequences the KV cache must hold")
    # The share of each GPU's memory the engine takes for weights and KV cache. Unset: the
    # engine's own default (vLLM 0.9; SGLang by tensor parallel size, 0.88 at 1 to 0.79 at 16).
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0.1, le=0.99,
        description="the engine's share of GPU memory. Unset: the engine's own default (vLLM "
                    "0.9; SGLang's `--mem-fraction-static` by tensor parallel size: 0.88 at "
                    "1, 0.87 at 2, 0.85 at 4, 0.81 at 8, 0.79 at 16, from its "
                    "`ServerArgs.__post_init__`), which the sizing uses too")
    weights_path: WeightsFolder = Field(
        description="absolute path of the weights on the host (required): a folder of its "
                    "own, not `/` or a system folder")
    gpus: ExpectedGpus = ExpectedGpus()
    storage: StorageSettings = StorageSettings()
    repos: RepoSettings = RepoSettings()
    apt: AptSettings = AptSettings()
    network: NetworkSettings = NetworkSettings()
    driver: DriverSettings = DriverSettings()
    docker: DockerSettings = DockerSettings()
    python_env: PythonEnvSettings = PythonEnvSettings()
    verify: VerifySettings = VerifySettings()
    preflight: PreflightSettings = PreflightSettings()
    sampling: SamplingSettings = SamplingSettings()
    weights: WeightsSettings = WeightsSettings()
    inference: InferenceSettings = InferenceSettings()
    multinode: MultiNodeSettings = MultiNodeSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    gateway: GatewaySettings = GatewaySettings()
    canary: CanarySettings = CanarySettings()
    rollout: RolloutSettings = RolloutSettings()


# --- hosts, groups, the fleet ---------------------------------------------------------------
class HostEntry(Strict):
    # Where to connect: an SSH host name or address, @docker/CONTAINER, or @local.
    # Unset: the host's own name from the fleet file.
    target: Target | None = None
    ssh_user: UserName | None = None
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    ssh_key: str | None = None
    # Run commands through sudo (for non-root SSH users).
    sudo: bool = False
    settings: dict[str, object] = Field(default_factory=dict)


class GroupEntry(Strict):
    settings: dict[str, object] = Field(default_factory=dict)
    # Host tables are validated one by one (HostEntry), so every bad host is reported.
    hosts: dict[str, dict[str, object]]


class FleetMeta(Strict):
    name: str = "fleet"
    description: str = ""


class FleetFile(Strict):
    fleet: FleetMeta = FleetMeta()
    # Models the catalog does not know, declared like inventory/catalog/models.toml entries
    # (the table name is the id): [models.my-model] architecture = ..., layers = ..., ...
    models: dict[str, dict[str, object]] = Field(default_factory=dict)
    settings: dict[str, object] = Field(default_factory=dict)
    # Group tables are validated one by one (GroupEntry), so every bad group is reported.
    groups: dict[str, dict[str, object]]


