"""MemMamba configuration: Hugging Face ``MambaConfig`` fields plus the note-pool memory fields."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

NOTE_POLICIES = ("score", "periodic", "all")
POOL_REPLACEMENTS = ("priority", "fifo")
RETRIEVAL_GATES = ("always", "threshold", "periodic")
FUSIONS = ("weighted", "gated", "residual")
SCAN_BACKENDS = (None, "auto", "ref", "cpu", "chunked", "cuda")
TIME_STEP_INIT_SCHEMES = ("random", "constant")
CPU_HALF_COMPUTE = ("auto", "float32", "native")


def _fail(field: str, value: object, allowed: str) -> None:
    raise ValueError(f"MemMambaConfig.{field} = {value!r} is invalid; allowed: {allowed}")


def _require_positive_int(field: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _fail(field, value, "a positive integer")


def _require_positive_float(field: str, value: object) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        _fail(field, value, "a finite number > 0")


class MemMambaConfig(PretrainedConfig):
    r"""Configuration of a MemMamba language model (arXiv 2510.03279).

    The backbone fields carry the names and defaults of ``transformers.MambaConfig`` so that
    Mamba checkpoints and habits carry over; ``intermediate_size = expand * hidden_size`` and
    ``time_step_rank="auto"`` resolves to ``ceil(hidden_size / 16)``.

    Backbone: ``vocab_size``, ``hidden_size``, ``state_size``, ``num_hidden_layers``,
    ``layer_norm_epsilon``, ``pad_token_id``, ``bos_token_id``, ``eos_token_id``, ``expand``,
    ``conv_kernel``, ``use_bias``, ``use_conv_bias``, ``hidden_act``, ``initializer_range``,
    ``residual_in_fp32``, ``time_step_rank``, ``time_step_scale``, ``time_step_min``,
    ``time_step_max``, ``time_step_init_scheme``, ``time_step_floor``,
    ``rescale_prenorm_residual``, ``use_cache``, ``tie_word_embeddings`` (as in Mamba);
    ``use_mambapy`` and ``use_associative_scan`` are accepted for compatibility and unused (the
    scans live in ``memmamba.ops``).

    Memory (labels: *paper* = stated in the paper, *ours* = our choice where it is silent):

    - ``use_memory`` (True): build the note pools and attentions; False gives plain Mamba.
    - ``summary_size`` (64, paper): width of a note (the summariser ``Linear(d_model -> 64)``).
    - ``pool_size`` (50, paper): notes kept per layer.
    - ``note_window`` (32, paper's best in its sweep): a note is the element-wise max of the
      projected inputs over a non-overlapping window of that many real tokens, counted from
      each sequence's first real token; it exists only after the window's last token (ours:
      causal form).
    - ``note_policy``: ``"score"`` (paper text: learned score sigmoid(w.x + b), window score =
      max token score, note kept iff score > ``note_threshold``; the stored note is
      score * note so the scorer is trained), ``"periodic"`` (paper Fig. 2: a window is noted
      iff its first position mod ``note_period`` < ``note_period_active``), ``"all"`` (ours).
    - ``note_threshold`` (0.5, ours): tau_1.
    - ``note_period`` (200) / ``note_period_active`` (50): Fig. 2's ``t % 200 < 50``; also used
      by ``retrieval_gate="periodic"``.
    - ``pool_replacement``: ``"priority"`` (ours; a full pool evicts its lowest-score note iff
      the new note scores higher) or ``"fifo"`` (paper's other option; forced when the policy
      gives no score, i.e. ``"periodic"`` and ``"all"``).
    - ``retrieval_gate``: ``"always"`` (paper: cross-token attention at every layer),
      ``"threshold"`` (learned sigmoid(w_g.x + b) > ``retrieval_threshold``; the context is
      multiplied by the gate value so it is trained; ours: gate on the layer input, the paper's
      z is undefined), ``"periodic"`` (Fig. 2 rule on the token position).
    - ``retrieval_threshold`` (0.5, ours): tau_2.
    - ``cross_layer_every`` (4, ours; p): layers with ``(l + 1) % p == 0`` (0-indexed l, so
      never the first layer) also attend over the pools of the previous ``g`` layers; 0
      disables cross-layer attention.
    - ``cross_layer_span`` (None -> p, ours; g).
    - ``memory_heads`` (4, ours): heads of both attentions; must divide ``summary_size``.
    - ``fusion``: ``"weighted"`` (paper's best, Table 4: x + alpha * c with per-channel alpha
      initialised to ``fusion_init``), ``"gated"`` (x + sigmoid(W[x; c] + b) * W_o c) or
      ``"residual"`` (x + W_o c); W_o is zero-initialised for gated/residual, so a fresh memory
      is an exact no-op.
    - ``fusion_init`` (0.0, ours): initial alpha of the weighted fusion.
    - ``scan_backend`` (None = automatic): backend of ``memmamba.ops.selective_scan_fn``.
    - ``fused_decode`` (True, ours): one-token cached calls in fp32 CPU inference run the whole
      layer as one numba kernel (``memmamba.models.fast_decode``); False keeps the torch path.
    - ``decode_threads`` (None = automatic, ours): threads of that kernel. Automatic uses
      ``min(torch.get_num_threads(), 4)`` when numba's threading layer is OpenMP or TBB, else 1;
      the threads spin while they wait for each other, so on cores that other processes keep
      busy 1 can be faster. Results are bit-identical for any value.
    - ``cpu_half_compute`` (``"auto"``, ours): how a bfloat16 / float16 model computes
      multi-token calls on CPU outside autograd. ``"float32"``: each layer (and the head) runs
      with float32 copies of its weights, made per call and per layer so the extra memory is
      one layer's; ``"native"``: in the weights' dtype; ``"auto"``: float32 when the CPU has no
      native bfloat16 matmul (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), where
      torch's half-precision GEMMs run tens of times slower than float32 ones. States and
      notes are stored in the model's dtype either way.
    """

    model_type = "memmamba"

    # Mamba backbone (names and defaults of transformers.MambaConfig)
    vocab_size: int = 50280
    hidden_size: int = 768
    state_size: int = 16
    num_hidden_layers: int = 32
    layer_norm_epsilon: float = 1e-5
    pad_token_id: int | None = 0
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 0
    expand: int = 2
    conv_kernel: int = 4
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    initializer_range: float = 0.1
    residual_in_fp32: bool = True
    time_step_rank: str | int = "auto"
    time_step_scale: float = 1.0
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_init_scheme: str = "random"
    time_step_floor: float = 1e-4
    rescale_prenorm_residual: bool = False
    use_cache: bool = True
    use_mambapy: bool = False
    use_associative_scan: bool = True
    tie_word_embeddings: bool = True

    # Memory
    use_memory: bool = True
    summary_size: int = 64
    pool_size: int = 50
    note_window: int = 32
    note_policy: str = "score"
    note_threshold: float = 0.5
    note_period: int = 200
    note_period_active: int = 50
    pool_replacement: str = "priority"
    retrieval_gate: str = "always"
    retrieval_threshold: float = 0.5
    cross_layer_every: int = 4
    cross_layer_span: int | None = None
    memory_heads: int = 4
    fusion: str = "weighted"
    fusion_init: float = 0.0
    scan_backend: str | None = None
    fused_decode: bool = True
    decode_threads: int | None = None
    cpu_half_compute: str = "auto"

    def __post_init__(self, **kwargs):
        for field in ("hidden_size", "expand"):
            _require_positive_int(field, getattr(self, field))
        self.intermediate_size = int(self.expand * self.hidden_size)
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        self._validate_memmamba()
        super().__post_init__(**kwargs)

    # ----------------------------------------------------------------------------------------
    def _validate_memmamba(self) -> None:
        """Raise ValueError naming the field, the value and what is allowed."""
        for field in (
            "vocab_size",
            "hidden_size",
            "state_size",
            "num_hidden_layers",
            "expand",
            "conv_kernel",
            "time_step_rank",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                _fail(field, value, "a positive integer")
        for field in (
            "layer_norm_epsilon",
            "time_step_scale",
            "time_step_min",
            "time_step_max",
            "time_step_floor",
        ):
            _require_positive_float(field, getattr(self, field))
        if self.time_step_min > self.time_step_max:
            _fail(
                "time_step_min",
                self.time_step_min,
                f"a number <= time_step_max={self.time_step_max}",
            )
        if (
            not isinstance(self.initializer_range, (int, float))
            or isinstance(self.initializer_range, bool)
            or not math.isfinite(self.initializer_range)
            or self.initializer_range < 0
        ):
            _fail("initializer_range", self.initializer_range, "a finite number >= 0")
        for field in (
            "use_memory",
            "use_bias",
            "use_conv_bias",
            "residual_in_fp32",
            "rescale_prenorm_residual",
            "tie_word_embeddings",
            "fused_decode",
        ):
            if not isinstance(getattr(self, field), bool):
                _fail(field, getattr(self, field), "True or False")
        if self.time_step_init_scheme not in TIME_STEP_INIT_SCHEMES:
            _fail("time_step_init_scheme", self.time_step_init_scheme, str(TIME_STEP_INIT_SCHEMES))
        threads = self.decode_threads
        if threads is not None and (
            not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
        ):
            _fail("decode_threads", threads, "None (automatic) or a positive integer")
        if self.cpu_half_compute not in CPU_HALF_COMPUTE:
            _fail("cpu_half_compute", self.cpu_half_compute, f"one of {CPU_HALF_COMPUTE}")
        for field in ("summary_size", "pool_size", "note_window", "note_period", "memory_heads"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                _fail(field, value, "a positive integer")
        if not isinstance(self.note_period_active, int) or not (
            0 <= self.note_period_active <= self.note_period
        ):
            _fail(
                "note_period_active",
                self.note_period_active,
                f"an integer in [0, note_period={self.note_period}]",
            )
        if self.note_policy not in NOTE_POLICIES:
            _fail("note_policy", self.note_policy, str(NOTE_POLICIES))
        if self.pool_replacement not in POOL_REPLACEMENTS:
            _fail("pool_replacement", self.pool_replacement, str(POOL_REPLACEMENTS))
        if self.retrieval_gate not in RETRIEVAL_GATES:
            _fail("retrieval_gate", self.retrieval_gate, str(RETRIEVAL_GATES))
        if self.fusion not in FUSIONS:
            _fail("fusion", self.fusion, str(FUSIONS))
        if self.scan_backend not in SCAN_BACKENDS:
            _fail("scan_backend", self.scan_backend, str(SCAN_BACKENDS))
        for field in ("note_threshold", "retrieval_threshold"):
            value = getattr(self, field)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not (0.0 <= value <= 1.0)
            ):
                _fail(field, value, "a number in [0, 1] (it is compared with a sigmoid)")
        if not isinstance(self.fusion_init, (int, float)) or not math.isfinite(self.fusion_init):
            _fail("fusion_init", self.fusion_init, "a finite number")
        every = self.cross_layer_every
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            _fail("cross_layer_every", every, "an integer >= 0 (0 disables cross-layer attention)")
        span = self.cross_layer_span
        if span is not None and (not isinstance(span, int) or isinstance(span, bool) or span < 1):
            _fail("cross_layer_span", span, "None (= cross_layer_every) or a positive integer")
        if self.summary_size % self.memory_heads != 0:
            _fail(
                "memory_heads", self.memory_heads, f"a divisor of summary_size={self.summary_size}"
            )

    # ----------------------------------------------------------------------------------------
    @property
    def effective_pool_replacement(self) -> str:
        """``pool_replacement``, except FIFO when the note policy gives no score."""
        return self.pool_replacement if self.note_policy == "score" else "fifo"

    @property
    def effective_cross_layer_span(self) -> int:
        """g: the number of previous layers a cross-layer attention reads."""
        return (
            self.cross_layer_span if self.cross_layer_span is not None else self.cross_layer_every
        )

    def has_cross_layer(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx`` (0-indexed) runs cross-layer attention."""
        p = self.cross_layer_every
        return (
            self.use_memory
            and p > 0
            and layer_idx > 0
            and (layer_idx + 1) % p == 0
            and self.effective_cross_layer_span > 0
        )

    def cross_layer_sources(self, layer_idx: int) -> list[int]:
        """Indices of the layers whose pools cross-layer attention of ``layer_idx`` reads."""
        if not self.has_cross_layer(layer_idx):
            return []
        return list(range(max(0, layer_idx - self.effective_cross_layer_span), layer_idx))

    @property
    def layer_types(self) -> list[str]:
        return ["linear_attention"] * self.num_hidden_layers


__all__ = ["MemMambaConfig"]
