"""Scan&Snap sequence classes (docs/theory.md §1.2).

A class n has a query token m = psi(n), a next token n, and a distribution P(l | m, n) over the
contextual tokens. Contextual tokens are drawn i.i.d. with replacement; the query is the last
token of the sequence; the model predicts the next token.

Token layout of the authors' generator (kept exactly):
``[common tokens (10)] + [10 distinct tokens per class] + [query tokens] + [next tokens]``.
Class k has query ``k // next_per_last`` (among the query tokens) and next token k (among the
next tokens); weights are 1 for each common token and ``linspace(0.1, 1, 10)`` over the class's
own distinct tokens, normalised per class.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sslens.constants import PRESETS
from sslens.errors import SslensError, require

N_COMMON = 10
N_DISTINCT_PER_CLASS = 10


@dataclass(frozen=True)
class SequenceClass:
    """One class: query token ``m``, next token ``n`` and unnormalised weights over context tokens."""

    m: int
    n: int
    probs: dict[int, float]  # token id -> P(l | m, n) (normalised in the spec)


@dataclass(frozen=True)
class SequenceClassSpec:
    """The data of a Scan&Snap experiment: M tokens, K classes, sequence length T (query included)."""

    M: int
    classes: tuple[SequenceClass, ...]
    T: int = 128
    name: str = "custom"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        require(isinstance(self.M, int) and self.M >= 2, "M", f"got {self.M!r}", "an int >= 2")
        require(isinstance(self.T, int) and self.T >= 2, "T", f"got {self.T!r}", "an int >= 2 (context + query)")
        require(len(self.classes) >= 1, "classes", "no classes given", "one or more classes")
        seen = set()
        normed = []
        for k, c in enumerate(self.classes):
            f = f"classes[{k}]"
            for name, tok in (("m", c.m), ("n", c.n)):
                require(isinstance(tok, int) and 0 <= tok < self.M, f"{f}.{name}", f"token id {tok!r} out of range",
                        f"0..{self.M - 1}")
            require((c.m, c.n) not in seen, f"{f}", f"duplicate (query m={c.m}, next n={c.n})", "distinct (m, n) pairs")
            seen.add((c.m, c.n))
            require(len(c.probs) > 0, f"{f}.probs", "class has no contextual tokens", "a non-empty {token: prob} map")
            for tok, p in c.probs.items():
                require(isinstance(tok, int) and 0 <= tok < self.M, f"{f}.probs", f"token id {tok!r} out of range",
                        f"0..{self.M - 1}")
                require(p == p and p >= 0 and p != float("inf"), f"{f}.probs[{tok}]", f"probability {p!r}", "finite values >= 0")
            total = float(sum(c.probs.values()))
            require(total > 0, f"{f}.probs", "all probabilities are zero", "at least one value > 0")
            normed.append(SequenceClass(c.m, c.n, {t: float(p) / total for t, p in sorted(c.probs.items()) if p > 0}))
        object.__setattr__(self, "classes", tuple(normed))
        P = torch.zeros(len(normed), self.M, dtype=torch.float64)
        for k, c in enumerate(normed):
            P[k, list(c.probs)] = torch.tensor(list(c.probs.values()), dtype=torch.float64)
        object.__setattr__(self, "_P", P)  # cached: the sampler needs it every batch
        cnt = (P > 0).sum(0).tolist()  # the token partition, computed once (analyses ask for it per run)
        object.__setattr__(self, "_distinct", tuple(tuple(t for t in c.probs if cnt[t] == 1) for c in normed))
        object.__setattr__(self, "_common", tuple(tuple(t for t in c.probs if cnt[t] > 1) for c in normed))

    # ----- derived quantities -------------------------------------------------------------
    @property
    def K(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def P(self, dtype=torch.float64) -> Float[Tensor, "K M"]:
        """The class distributions as a dense [K, M] matrix, row k = p(l | m, n) of class k (rows sum to 1)."""
        return self._P.to(dtype)

    @property
    def queries(self) -> list[int]:
        """Query token m = psi(n) of each class."""
        return [c.m for c in self.classes]

    @property
    def nexts(self) -> list[int]:
        """Next token n of each class."""
        return [c.n for c in self.classes]

    def support_count(self) -> Int[Tensor, " M"]:
        """How many classes each token appears in."""
        return (self.P() > 0).sum(0)

    @property
    def distinct(self) -> list[list[int]]:
        """Per class: tokens with P(l|n) > 0 for exactly this class (docs/theory.md §1.2)."""
        return [list(d) for d in self._distinct]

    @property
    def common(self) -> list[list[int]]:
        """Per class: tokens it shares with at least one other class."""
        return [list(c) for c in self._common]

    def to_dict(self) -> dict:
        """The JSON-able dict (``config.json``'s ``task.spec``)."""
        d = {f: getattr(self, f) for f in ("M", "classes", "T", "name", "meta")}
        d["classes"] = [{"m": c.m, "n": c.n, "probs": {str(t): p for t, p in c.probs.items()}} for c in self.classes]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SequenceClassSpec:
        """Rebuild (and validate) a spec from :meth:`to_dict`'s output."""
        try:
            classes = tuple(SequenceClass(int(c["m"]), int(c["n"]), {int(t): float(p) for t, p in c["probs"].items()})
                            for c in d["classes"])
        except (KeyError, TypeError, ValueError) as e:
            raise SslensError("classes", f"malformed class entry ({e})", "{m: int, n: int, probs: {token: prob}}") from None
        return cls(M=int(d["M"]), classes=classes, T=int(d.get("T", 128)), name=d.get("name", "custom"),
                   meta=dict(d.get("meta", {})))


@functools.lru_cache(maxsize=16)
def _spec_from_json(text: str) -> SequenceClassSpec:
    return SequenceClassSpec.from_dict(json.loads(text))


def spec_from_dict(d: dict) -> SequenceClassSpec:
    """:meth:`SequenceClassSpec.from_dict`, memoised on the dict's JSON (a sweep's runs share a few specs)."""
    return _spec_from_json(json.dumps(d, sort_keys=True))


# ----- presets (docs/theory.md §1.2) ----------------------------------------------------------------
def _authors_layout(num_last: int, next_per_last: int, T: int, name: str) -> SequenceClassSpec:
    require(isinstance(num_last, int) and num_last >= 1, "num_last", f"got {num_last!r}", "an int >= 1")
    require(isinstance(next_per_last, int) and next_per_last >= 1, "next_per_last", f"got {next_per_last!r}", "an int >= 1")
    K = num_last * next_per_last
    first_query = N_COMMON + N_DISTINCT_PER_CLASS * K
    first_next = first_query + num_last
    M = first_next + K
    distinct_w = torch.linspace(0.1, 1.0, N_DISTINCT_PER_CLASS, dtype=torch.float64).tolist()
    classes = []
    for k in range(K):
        probs = {t: 1.0 for t in range(N_COMMON)}
        base = N_COMMON + N_DISTINCT_PER_CLASS * k
        probs.update({base + i: w for i, w in enumerate(distinct_w)})
        classes.append(SequenceClass(m=first_query + k // next_per_last, n=first_next + k, probs=probs))
    meta = {"num_last": num_last, "next_per_last": next_per_last}
    return SequenceClassSpec(M=M, classes=tuple(classes), T=T, name=name, meta=meta)


def syn_small(T: int = 128) -> SequenceClassSpec:
    """Syn-Small (Fig. 4): 2 classes, each with its own query; M = 34."""
    return _authors_layout(num_last=2, next_per_last=1, T=T, name="syn-small")


def syn_medium(num_last: int = 1, T: int = 128) -> SequenceClassSpec:
    """Syn-Medium (Fig. 6): ``num_last`` queries x 2 next tokens; M = 33, 79, 125, 240 for 1, 3, 5, 10."""
    return _authors_layout(num_last=num_last, next_per_last=2, T=T, name=f"syn-medium-{num_last}")


def one_common(K: int = 10, M: int = 1000, T: int = 128) -> SequenceClassSpec:
    """Thm 4's premise (docs/theory.md §1.3): ONE common token (id 0) shared by K classes.

    Each class has its own query and next token; the other M - 1 - 2K tokens are split as evenly as possible into
    the classes' distinct tokens, weighted linspace(0.1, 1, d) as the authors' (common token weight 1).
    """
    require(isinstance(K, int) and K >= 2, "K", f"got {K!r}", "an int >= 2")
    n_distinct = M - 1 - 2 * K
    require(isinstance(M, int) and n_distinct >= 2 * K, "M", f"got {M!r} for K = {K}", f"an int >= {4 * K + 1}")
    sizes = [n_distinct // K + (k < n_distinct % K) for k in range(K)]
    first_query, classes, base = 1 + n_distinct, [], 1
    for k, d in enumerate(sizes):
        w = torch.linspace(0.1, 1.0, d, dtype=torch.float64).tolist()
        probs = {0: 1.0, **{base + i: w[i] for i in range(d)}}
        classes.append(SequenceClass(m=first_query + k, n=first_query + K + k, probs=probs))
        base += d
    return SequenceClassSpec(M=M, classes=tuple(classes), T=T, name=f"one-common-K{K}-M{M}", meta={"K": K})


def preset(name: str, num_last: int = 1, T: int = 128) -> SequenceClassSpec:
    """A preset by CLI name."""
    if name == "syn-small":
        return syn_small(T=T)
    if name == "syn-medium":
        return syn_medium(num_last=num_last, T=T)
    raise SslensError("preset", f"unknown preset {name!r}", ", ".join(PRESETS))


# ----- sampler ---------------------------------------------------------------------------------
def sample(
    spec: SequenceClassSpec, batch: int, generator: torch.Generator
) -> tuple[Int[Tensor, "batch T"], Int[Tensor, " batch"], Int[Tensor, " batch"]]:
    """Draw ``batch`` sequences: class k uniform, T-1 contextual tokens i.i.d. from P(.|k), then the query.

    Returns ``tokens [batch, T]`` (query last), ``next [batch]`` and the class index ``klass [batch]``.
    """
    require(isinstance(batch, int) and batch >= 1, "batch", f"got {batch!r}", "an int >= 1")
    P = spec.P(dtype=torch.float64)
    klass = torch.randint(0, spec.K, (batch,), generator=generator)
    ctx = torch.multinomial(P[klass], spec.T - 1, replacement=True, generator=generator)
    m = torch.tensor(spec.queries)[klass]
    tokens = torch.cat([ctx, m[:, None]], dim=1)
    nxt = torch.tensor(spec.nexts)[klass]
    return tokens, nxt, klass
