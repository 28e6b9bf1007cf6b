"""A character-level language model on the Python standard library's own source files, trained
with and without each recurrent regulariser of ``lstmkit.LSTM``.

The corpus needs no download: it is the ``.py`` files of the running interpreter's standard
library, read in sorted order. Whole files go either to training or to validation (every tenth
file is held out), so the validation text is code the model never saw. Each configuration
trains the same model (byte embedding, one lstmkit LSTM layer, a linear readout) from the same
initial weights on the same batches, and is scored on the same validation windows:

* ``none``: the plain layer;
* ``recurrent_dropout``: variational dropout on h(t-1) as it enters the recurrent product;
* ``zoneout``: each unit keeps its previous value with some probability (training), the
  expectation in eval;
* ``weight_drop``: DropConnect on the recurrent weight matrix, a new mask per forward call;
* ``layernorm``: the layer-norm LSTM (a normaliser rather than a regulariser, for comparison).

It writes a JSON file with every curve (after each configuration; a rerun with the same
settings keeps the configurations already there), a PNG of the validation loss (nats per
character) against training steps, and a markdown table. The training set is kept small on
purpose, so that the plain model overfits within the run and the regularisers have something to
do.

    python examples/char_lm.py --out docs/char-lm

Each configuration takes about ten minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lstmkit

#: Every configuration: its layer arguments.
CONFIGS: dict[str, dict[str, Any]] = {
    "none": {},
    "recurrent_dropout": {"recurrent_dropout": 0.25},
    "zoneout": {"zoneout": 0.1},
    "weight_drop": {"weight_drop": 0.3},
    "layernorm": {"variant": "layernorm"},
}


def corpus(train_bytes: int, val_bytes: int) -> tuple[Tensor, Tensor]:
    """Training and validation text as byte tensors: every tenth standard-library file (in
    sorted order) is held out for validation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts
                   and "test" not in p.parts and "tests" not in p.parts)
    train, val = bytearray(), bytearray()
    for k, path in enumerate(files):
        target, limit = (val, val_bytes) if k % 10 == 0 else (train, train_bytes)
        if len(target) < limit:
            target.extend(path.read_bytes()[: limit - len(target)])
        if len(train) >= train_bytes and len(val) >= val_bytes:
            break
    if len(train) < train_bytes // 2 or len(val) < val_bytes // 2:
        raise RuntimeError(f"the standard library under {root} holds too little source text")
    return (torch.frombuffer(train, dtype=torch.uint8).long(),
            torch.frombuffer(val, dtype=torch.uint8).long())


class CharLM(nn.Module):
    """Byte embedding, one recurrent layer, a linear readout over the 256 byte values."""

    def __init__(self, hidden: int, embed: int, layer_args: dict[str, Any]) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, embed)
        self.rnn = lstmkit.LSTM(embed, hidden, **layer_args)
        self.out = nn.Linear(hidden, 256)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(self.embed(x))
        return self.out(h)


def windows(text: Tensor, starts: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Inputs and next-character targets ``[length, batch]`` starting at ``starts``."""
    idx = starts.unsqueeze(0) + torch.arange(length).unsqueeze(1)
    return text[idx], text[idx + 1]


def evaluate(model: CharLM, val: Tensor, length: int, count: int) -> float:
    """Mean cross-entropy (nats per character) over ``count`` evenly spaced windows."""
    model.eval()
    starts = torch.linspace(0, len(val) - length - 2, count).long()
    with torch.no_grad():
        x, y = windows(val, starts, length)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    model.train()
    return loss


def train(name: str, args: argparse.Namespace, train_text: Tensor, val_text: Tensor
          ) -> dict[str, Any]:
    """Train one configuration; its curves, best and final validation loss, time per step."""
    torch.manual_seed(args.seed)
    model = CharLM(args.hidden, args.embed, CONFIGS[name])
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = torch.Generator().manual_seed(args.seed + 1)
    curve: list[dict[str, float]] = []
    seconds, window = 0.0, []
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(train_text) - args.length - 2, (args.batch,),
                               generator=batches)
        x, y = windows(train_text, starts, args.length)
        begin = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seconds += time.perf_counter() - begin
        window.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            val = evaluate(model, val_text, args.length, args.val_windows)
            curve.append({"step": step, "train": sum(window) / len(window), "val": val})
            window = []
            print(f"{name:>18}  step {step:5d}  train {curve[-1]['train']:.3f}  val {val:.3f}",
                  flush=True)
    vals = [c["val"] for c in curve]
    return {"name": name, "layer_args": CONFIGS[name], "curve": curve, "best_val": min(vals),
            "final_val": vals[-1], "final_train": curve[-1]["train"],
            "seconds_per_step": seconds / args.steps}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Validation loss against training steps, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        steps = [c["step"] for c in r["curve"]]
        ax.plot(steps, [c["val"] for c in r["curve"]], label=r["name"])
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation loss (nats per character)")
    ax.set_title("Character-level LM on the Python standard library (held-out files)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: list[dict[str, Any]]) -> str:
    """Best and final validation loss and the final training loss per configuration. (Time
    per step is in the JSON; configurations trained at different times on a shared machine
    cannot be compared by it: ``lstmkit bench --regularisers`` measures the cost.)"""
    lines = ["| configuration | layer arguments | best val | final val | final train |",
             "|---|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['name']} | `{r['layer_args'] or '{}'}` | {r['best_val']:.3f} | "
                     f"{r['final_val']:.3f} | {r['final_train']:.3f} |")
    return "\n".join(lines)


def _earlier(path: Path, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The configurations an earlier run with the same settings already wrote to ``path``."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    same = ("steps", "eval_every", "hidden", "embed", "length", "batch", "lr", "train_bytes",
            "val_bytes", "val_windows", "seed")
    if any(earlier.get("args", {}).get(k) != meta[k] for k in same):
        return {}
    return {r["name"]: r for r in earlier.get("results", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--length", type=int, default=100, help="characters per window")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-bytes", type=int, default=200_000)
    parser.add_argument("--val-bytes", type=int, default=100_000)
    parser.add_argument("--val-windows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (more only on an idle machine)")
    parser.add_argument("--out", type=Path, default=Path("char-lm"),
                        help="output prefix: writes PREFIX.json, PREFIX.png, PREFIX.md")
    args = parser.parse_args()
    for name in ("steps", "eval_every", "hidden", "embed", "length", "batch", "val_windows",
                 "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive int")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error("--lr: expected a positive number")
    torch.set_num_threads(args.threads)
    train_text, val_text = corpus(args.train_bytes, args.val_bytes)
    print(f"corpus: {len(train_text):,} training and {len(val_text):,} validation characters "
          "from the standard library's .py files", flush=True)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    done = _earlier(Path(f"{args.out}.json"), meta)
    results = []
    for name in args.configs:
        if name in done:
            print(f"{name}: kept from {args.out}.json", flush=True)
            results.append(done[name])
            continue
        results.append(train(name, args, train_text, val_text))
        # Written after every configuration: an interrupted run keeps what it finished.
        keep = {**done, **{r["name"]: r for r in results}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{args.out}.json.tmp")
        tmp.write_text(json.dumps({"args": meta, "results": list(keep.values())}, indent=1))
        tmp.replace(f"{args.out}.json")
    plot(results, Path(f"{args.out}.png"))
    head = ("# Character-level LM on the standard library, with and without each regulariser\n\n"
            f"`python examples/char_lm.py --out {args.out}` (settings in `{args.out}.json`); "
            "validation loss in nats per character on held-out files, after "
            f"{args.steps} steps of {args.batch} windows of {args.length} characters.\n\n"
            f"![validation loss]({Path(str(args.out)).name}.png)\n\n")
    Path(f"{args.out}.md").write_text(head + table(results) + "\n")
    print()
    print(table(results))


if __name__ == "__main__":
    main()
