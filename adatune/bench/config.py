"""What ``adatune bench`` measures and what it returns, without torch.

The methods, the configuration (validated on creation) and the result records
of :mod:`adatune.bench.measure`, which re-exports them; the command reads them for its
options and checks before it loads the training stack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from adatune.catalog import OPTIMIZER_NAMES, DataSpec, canonical_network, check_compatible
from adatune.checks import MAX_SEED, finite, whole
from adatune.errors import ConfigError
from adatune.methods.tuners.settings import HVP_MODES
from adatune.running.runtypes import DEFAULT_PRECISION, PRECISIONS

METHODS = ("plain", "hd", "marthe-mu0", "marthe", "rtho", "floor", "floor-torch")
# "floor": the autograd work an exact MARTHE step cannot avoid (a gradient with
# create_graph, one HVP, a validation gradient, the optimizer step), with no tuner
# code at all, its forward under fast_double_backward as the tuners run it;
# MARTHE's ratio to it is the tuner's own overhead. "floor-torch": the same with
# torch's own double-backward formulas.
HVP_METHODS = ("marthe", "rtho")  # the methods whose cost depends on the HVP mode and k
#: Bounds of the bench's sizes (a batch of 65536 CIFAR-shaped inputs is 800 MB).
MAX_BENCH_BATCH = 65_536
MAX_BENCH_STEPS = 100_000


@dataclass(frozen=True)
class BenchConfig:
    network: str = "vgg11"
    batch_size: int = 64
    optimizer: str = "sgd"
    device: str = "auto"
    steps: int = 10
    warmup: int = 2
    hvp: tuple[str, ...] = HVP_MODES
    #: The tuners' hyper_every values (k: the HVP and validation gradient on 1 step in k).
    hyper_every: tuple[int, ...] = (1,)
    #: The fractions of the batch the tuners take their HVP on (1: the whole batch).
    hvp_fraction: tuple[float, ...] = (1.0,)
    memory: bool = True
    input_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    #: The forward's precision, as a run's (fp32, or autocast to bf16 / fp16 with a
    #: GradScaler); the tuners' tangents and hypergradients stay float32.
    precision: str = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        object.__setattr__(self, "network", canonical_network(self.network))
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ConfigError(f"unknown optimizer {self.optimizer!r} "
                              f"(choose from: {', '.join(OPTIMIZER_NAMES)})")
        whole("batch_size", self.batch_size, 1, MAX_BENCH_BATCH)
        whole("steps", self.steps, 1, MAX_BENCH_STEPS)
        whole("warmup", self.warmup, 0, MAX_BENCH_STEPS)
        whole("seed", self.seed, 0, MAX_SEED)
        for method in self.methods:
            if method not in METHODS:
                raise ConfigError(f"unknown method {method!r} (choose from: {', '.join(METHODS)})")
        if "plain" not in self.methods:
            object.__setattr__(self, "methods", ("plain", *self.methods))
        for mode in self.hvp:
            if mode not in HVP_MODES:
                raise ConfigError(f"unknown hvp {mode!r} (choose from: {', '.join(HVP_MODES)})")
        for every in self.hyper_every:
            whole("hyper_every", every, 1, MAX_BENCH_STEPS)
        for fraction in self.hvp_fraction:
            finite("hvp_fraction", fraction, low=0, low_open=True, high=1)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r} "
                              f"(choose from: {', '.join(PRECISIONS)})")
        check_compatible(self.network, self.spec)

    @property
    def spec(self) -> DataSpec:
        return DataSpec("synthetic", self.input_shape, self.num_classes)

    def labels(self) -> list[str]:
        """Method labels measured: e.g. ``marthe``, ``marthe[finite-difference]``,
        ``marthe[finite-difference, every 4]`` and ``marthe[part 0.25]`` (:func:`label`)."""
        out = []
        for method in self.methods:
            if method in HVP_METHODS:
                out += [label(method, mode, every, fraction) for mode in self.hvp
                        for every in self.hyper_every for fraction in self.hvp_fraction]
            else:
                out.append(method)
        return out


def label(method: str, hvp: str = HVP_MODES[0], every: int = 1, fraction: float = 1.0) -> str:
    """``method``, with its HVP mode unless exact, ``every k`` unless k = 1 and ``part f``
    unless the HVP takes the whole batch, in brackets."""
    options = ([hvp] * (hvp != HVP_MODES[0]) + [f"every {every}"] * (every != 1)
               + [f"part {fraction:g}"] * (fraction != 1))
    return f"{method}[{', '.join(options)}]" if options else method


def split_label(text: str) -> tuple[str, str, int, float]:
    """``(method, hvp, every, fraction)`` of a :func:`label`."""
    method, _, rest = text.partition("[")
    hvp, every, fraction = HVP_MODES[0], 1, 1.0
    for option in filter(None, rest.rstrip("]").split(", ")):
        if option.startswith("every "):
            every = int(option.removeprefix("every "))
        elif option.startswith("part "):
            fraction = float(option.removeprefix("part "))
        else:
            hvp = option
    return method, hvp, every, fraction


#: A figure whose steps spread (interquartile range) over more than this fraction of their
#: median is flagged: its ratio says more about the machine's other work than the method.
NOISY_SPREAD = 0.25


@dataclass(frozen=True)
class MethodResult:
    method: str
    step_ms: float
    ratio: float
    peak_mb: float | None
    #: Interquartile range of the step times over their median (None: fewer than 4 steps).
    spread: float | None = None

    @property
    def noisy(self) -> bool:
        """The steps spread over more than :data:`NOISY_SPREAD` of their median."""
        return self.spread is not None and self.spread > NOISY_SPREAD


@dataclass(frozen=True)
class BenchResult:
    config: BenchConfig
    device: str
    results: tuple[MethodResult, ...]

    def to_json(self) -> dict:
        return {"device": self.device, "network": self.config.network,
                "batch_size": self.config.batch_size, "optimizer": self.config.optimizer,
                "precision": self.config.precision,
                "results": [asdict(r) for r in self.results]}
