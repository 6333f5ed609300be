"""What a bench run measures: groups (one shape, one reference step) of variants of our step, and the
speed targets (docs/benchmarks.md). Pure data and validation; nothing here touches a GPU. No ComfyUI imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..config import TARGET_PRESETS

TARGETS = {"attn": TARGET_PRESETS["attention"], "attn_ffn": TARGET_PRESETS["attention_ffn"],
           "all": TARGET_PRESETS["all"]}
# our target group -> the diffusers module names PEFT adapts for it (the reference step)
PEFT_TARGETS = {"attention": ("to_q", "to_k", "to_v", "to_out.0"),
                "ffn": ("linear_1", "linear_2", "linear_3"), "adaln": ("norm1.linear",)}
FULL_TARGETS = ("attention", "ffn", "adaln", "final", "embedders")
MODES = ("lora", "full")
CKPT = ("auto", "on", "off")
BASES = ("bf16", "fp8", "int8")
COMPUTES = ("bf16", "fp8")  # model.base_compute of our step
ACTIVATIONS = ("bf16", "fp8")  # train.saved_activations of our step
BACKBONES = ("diffusers", "comfy")
FAMILIES = ("lumina2", "zimage")  # the random full-size model of a group (models.CONFIGS)
REF_BUDGET = -1.0  # memory budget "ref": the peak the reference step measured in the same run


@dataclass(frozen=True)
class Variant:
    """One configuration of our step, timed against its group's reference."""

    label: str = "ours"
    compile: bool = True
    ckpt: str = "auto"
    memory_budget_gib: float = 0.0  # ckpt auto: 0 = 90 % of the card, REF_BUDGET = the reference's peak
    base_precision: str = "bf16"
    backbone: str = "diffusers"
    base_compute: str = "bf16"
    saved_activations: str = "bf16"
    selective: bool = False  # train.selective_recompute (ckpt auto)
    split_lengths: bool = False  # train.split_caption_lengths (mixed caption lengths: one forward per length)
    training_adapter_rank: int = 0  # > 0: adapter.training_adapter, a random LoRA of this rank on every block Linear
    target_ratio: float = 0.0  # the speed target for this row (0 = none)
    target_peak_gib: float = 0.0  # 0 = none, REF_BUDGET = the reference's peak


@dataclass(frozen=True)
class Group:
    """One shape and mode: a reference step and the variants of ours measured against it."""

    name: str
    res: int = 1024
    batch: int = 4
    rank: int = 16
    targets: str = "attn"
    mode: str = "lora"
    caption_tokens: int = 256
    caption_lengths: tuple[int, ...] = ()  # per-sample caption tokens (cycled over the set); () = all caption_tokens
    samples: int = 0  # training-set size (0 = one batch; at least len(caption_lengths))
    aspects: tuple[tuple[int, int], ...] = ()  # (width, height) buckets the set is spread over; () = res²
    family: str = "lumina2"
    steps: int = 10
    warmup: int = 3
    reference: bool = True
    variants: tuple[Variant, ...] = field(default_factory=lambda: (Variant(),))

    def errors(self) -> list[str]:
        out = []
        if self.res < 256 or self.res % 16:
            out.append(f"--res must be a multiple of 16 and at least 256 (got {self.res})")
        for flag, value, lo in (("--batch", self.batch, 1), ("--rank", self.rank, 1), ("--steps", self.steps, 1),
                                ("--warmup", self.warmup, 1), ("--caption-tokens", self.caption_tokens, 1)):
            if value < lo:
                out.append(f"{flag} must be >= {lo} (got {value})")
        if any(not 1 <= n <= self.caption_tokens for n in self.caption_lengths):
            out.append(f"--caption-lengths must lie in 1..--caption-tokens {self.caption_tokens} "
                       f"(got {list(self.caption_lengths)})")
        if self.family not in FAMILIES:
            out.append(f"--family '{self.family}' is unknown; choose one of {', '.join(FAMILIES)}")
        n = max(self.batch, self.samples, len(self.caption_lengths))
        if self.aspects and (n % len(self.aspects) or n // len(self.aspects) % self.batch):
            out.append(f"{len(self.aspects)} aspect buckets need a training set of whole batches per bucket "
                       f"(got {n} samples at batch {self.batch}); set samples to a multiple of "
                       f"{len(self.aspects) * self.batch}")
        if any(w < 256 or h < 256 or w % 16 or h % 16 for w, h in self.aspects):
            out.append(f"aspect buckets must be multiples of 16 and at least 256 (got {list(self.aspects)})")
        if self.targets not in TARGETS:
            out.append(f"--targets '{self.targets}' is unknown; choose one of {', '.join(TARGETS)}")
        if self.mode not in MODES:
            out.append(f"--mode '{self.mode}' is unknown; choose one of {', '.join(MODES)}")
        for v in self.variants:
            out += _variant_errors(v)
        return out


def _variant_errors(v: Variant) -> list[str]:
    out = []
    if v.ckpt not in CKPT:
        out.append(f"--ckpt '{v.ckpt}' is unknown; choose one of {', '.join(CKPT)}")
    if v.base_precision not in BASES:
        out.append(f"--base-precision '{v.base_precision}' is unknown; choose one of {', '.join(BASES)}")
    if v.base_compute not in COMPUTES:
        out.append(f"--base-compute '{v.base_compute}' is unknown; choose one of {', '.join(COMPUTES)}")
    if v.saved_activations not in ACTIVATIONS:
        out.append(f"--saved-activations '{v.saved_activations}' is unknown; choose one of {', '.join(ACTIVATIONS)}")
    if v.saved_activations != "bf16" and v.ckpt == "on":
        out.append("--saved-activations fp8 needs --ckpt auto or off (checkpointing 'on' keeps no activations)")
    if v.backbone not in BACKBONES:
        out.append(f"--backbone '{v.backbone}' is unknown; choose one of {', '.join(BACKBONES)}")
    if v.memory_budget_gib < 0 and v.memory_budget_gib != REF_BUDGET:
        out.append(f"--memory-budget must be a number of GiB >= 0 or 'ref' (got {v.memory_budget_gib})")
    return out


def parse_budget(text: str) -> float:
    """'ref' -> REF_BUDGET, else GiB as a float (ValueError names the value)."""
    if text.strip().lower() == "ref":
        return REF_BUDGET
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--memory-budget '{text}' is not a number of GiB or 'ref'") from None


def issue5_suite(steps: int = 10, warmup: int = 3) -> list[Group]:
    """Every row of the speed targets, plus the ablations that show what each optimisation contributed."""
    eager = Variant("eager, ckpt on", compile=False, ckpt="on")
    comp_on = Variant("compiled, ckpt on", ckpt="on")
    b4_target = Variant("compiled, ckpt auto ≤ ref peak", memory_budget_gib=REF_BUDGET, target_ratio=2.5,
                        target_peak_gib=REF_BUDGET)
    b4 = Group("1024² batch 4, LoRA r16 attention", batch=4, steps=steps, warmup=warmup, variants=(
        eager, comp_on, b4_target,
        replace(b4_target, label="compiled, ckpt auto ≤ ref peak, fp8 base", base_precision="fp8"),
        Variant("compiled, ckpt off", ckpt="off"),
        # last: importing ComfyUI may set global torch flags
        replace(b4_target, label="ComfyUI NextDiT, compiled, ckpt auto ≤ ref peak", backbone="comfy",
                target_ratio=0.0)))
    b1 = Group("1024² batch 1, LoRA r16 attention", batch=1, steps=steps, warmup=warmup, variants=(
        Variant("compiled, ckpt auto ≤ 6 GiB", memory_budget_gib=6.0, target_ratio=2.0, target_peak_gib=6.0),
        Variant("compiled, ckpt auto ≤ 4 GiB, fp8 base", memory_budget_gib=4.0, base_precision="fp8",
                target_ratio=2.0, target_peak_gib=4.0)))
    s512 = Group("512² batch 4, LoRA r16 attention", res=512, batch=4, steps=steps, warmup=warmup, variants=(
        Variant("compiled, ckpt auto (card)", target_ratio=2.5),))
    full_v = Variant("full, compiled, ckpt auto ≤ 16 GiB, 8-bit AdamW in backward", memory_budget_gib=16.0,
                     target_ratio=1.5, target_peak_gib=16.0)
    full = Group("1024² batch 1, full fine-tune", batch=1, mode="full", steps=steps, warmup=warmup, variants=(
        full_v, replace(full_v, label=full_v.label + ", fp8 frozen base", base_precision="fp8")))
    return [b4, b1, s512, full]


def _selective(v: Variant) -> Variant:
    """`v` with train.selective_recompute on, labelled so."""
    return replace(v, label=v.label + ", selective recompute", selective=True)


def issue14_suite(steps: int = 10, warmup: int = 3) -> list[Group]:
    """The fp8 targets (fp8 compute, compressed activations; docs/benchmarks.md) and the chain of what each adds."""
    exact = Variant("compiled, ckpt auto ≤ ref peak, bf16 exact", memory_budget_gib=REF_BUDGET, target_ratio=2.0,
                    target_peak_gib=REF_BUDGET)
    sel = _selective(exact)
    fp8 = replace(exact, label="compiled, ckpt auto ≤ ref peak, fp8 compute", base_compute="fp8", target_ratio=2.5)
    fp8_sel = _selective(fp8)
    fp8_all = replace(fp8_sel, label=fp8.label + ", fp8 base, fp8 activations, selective recompute",
                      base_precision="fp8", saved_activations="fp8")
    # within ComfyUI TrainLoraNode's 25.0 GiB (docs/benchmarks.md, "Peers"): the row its 8× target is read from
    peer_mem = replace(fp8_all, label="compiled, ckpt auto ≤ 24 GiB, fp8 compute, fp8 base, fp8 activations, "
                       "selective recompute", memory_budget_gib=24.0, target_ratio=0.0, target_peak_gib=0.0)
    b4 = Group("1024² batch 4, LoRA r16 attention", batch=4, steps=steps, warmup=warmup,
               variants=(exact, sel, fp8, fp8_sel, fp8_all, peer_mem))
    b1_bf16 = Variant("compiled, ckpt auto ≤ 5.5 GiB, fp8 compute", memory_budget_gib=5.5, base_compute="fp8",
                      target_ratio=2.5, target_peak_gib=5.5)
    b1_8bit = Variant("compiled, ckpt auto ≤ 3.5 GiB, fp8 compute, fp8 base", memory_budget_gib=3.5,
                      base_precision="fp8", base_compute="fp8", target_ratio=2.5, target_peak_gib=3.5)
    b1 = Group("1024² batch 1, LoRA r16 attention", batch=1, steps=steps, warmup=warmup, variants=(
        b1_bf16, _selective(b1_bf16),
        b1_8bit, _selective(b1_8bit)))
    full_v = Variant("full, compiled, ckpt auto ≤ 16 GiB, 8-bit AdamW in backward, fp8 frozen base",
                     memory_budget_gib=16.0, base_precision="fp8", target_ratio=2.0, target_peak_gib=16.0)
    full = Group("1024² batch 1, full fine-tune", batch=1, mode="full", steps=steps, warmup=warmup, variants=(
        full_v, _selective(full_v),
        replace(full_v, label=full_v.label + ", fp8 activations", saved_activations="fp8")))
    return [b4, b1, full]


def draw_lengths(lo: int, hi: int, n: int, seed: int = 0) -> tuple[int, ...]:
    """n caption lengths drawn uniformly from lo..hi (seeded; the same on every machine)."""
    import random

    rng = random.Random(seed)
    return tuple(rng.randint(lo, hi) for _ in range(n))


def zimage_suite(steps: int = 6, warmup: int = 3) -> list[Group]:
    """Full-size Z-Image, our step against diffusers + PEFT's ZImageTransformer2DModel, the variants
    the Lumina2 groups measure (compiled, checkpointing auto under the reference's peak; + fp8 compute), and the
    cost of a training adapter (adapter.training_adapter: a de-distillation LoRA under the trained one)."""
    exact = Variant("compiled, ckpt auto ≤ ref peak, bf16 exact", memory_budget_gib=REF_BUDGET,
                    target_peak_gib=REF_BUDGET)
    fp8 = replace(exact, label="compiled, ckpt auto ≤ ref peak, fp8 compute", base_compute="fp8")
    under = replace(exact, label="compiled, ckpt auto ≤ ref peak, bf16 + training adapter r16 (all block Linears)",
                    training_adapter_rank=16)
    return [Group("Z-Image 1024² batch 4, LoRA r16 attention", family="zimage", batch=4, steps=steps,
                  warmup=warmup, variants=(exact, fp8, under)),
            Group("Z-Image 1024² batch 1, LoRA r16 attention", family="zimage", batch=1, steps=steps,
                  warmup=warmup, variants=(exact,))]


CAPTION_RANGE = (40, 300)


def captions_suite(steps: int = 12, warmup: int = 6, samples: int = 24) -> list[Group]:
    """Captions of drawn lengths (CAPTION_RANGE, seeded) at 1024² batch 4; padding to the batch's
    longest caption (masked attention) against one unmasked forward per length (train.split_caption_lengths).
    The warm-up is one epoch of the set: every split shape is compiled and planned once; padded batches meet new
    longest captions in every epoch."""
    lengths = draw_lengths(*CAPTION_RANGE, samples)
    pad_on = Variant("compiled, ckpt on, padded to the batch's longest (mask)", ckpt="on")
    pad_auto = Variant("compiled, ckpt auto ≤ ref peak, padded (mask)", memory_budget_gib=REF_BUDGET,
                       target_peak_gib=REF_BUDGET)
    return [Group("1024² batch 4, drawn caption lengths", batch=4, caption_tokens=CAPTION_RANGE[1],
                  caption_lengths=lengths, samples=samples, steps=steps, warmup=warmup, variants=(
                      pad_on, replace(pad_on, label="compiled, ckpt on, split by caption length", split_lengths=True),
                      pad_auto, replace(pad_auto, label="compiled, ckpt auto ≤ ref peak, split by caption length",
                                        split_lengths=True)))]


BUCKETS = ((1024, 1024), (832, 1216), (1216, 832))


def buckets_suite(steps: int = 6, warmup: int = 6, samples: int = 24) -> list[Group]:
    """Compile warm-up and graphs over a bucketed epoch of three aspect buckets; the warm-up is the
    first epoch (each bucket's first batch compiles and plans), the timed steps the second."""
    auto = Variant("compiled, ckpt auto ≤ ref peak", memory_budget_gib=REF_BUDGET, target_peak_gib=REF_BUDGET)
    return [Group("3 aspect buckets, batch 4", batch=4, aspects=BUCKETS, samples=samples, steps=steps,
                  warmup=warmup, variants=(auto, Variant("compiled, ckpt on", ckpt="on")))]


SUITES = {"issue5": issue5_suite, "issue14": issue14_suite, "zimage": zimage_suite, "captions": captions_suite,
          "buckets": buckets_suite}
