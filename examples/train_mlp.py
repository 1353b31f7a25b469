"""A small, real, CPU-friendly training run tracked by carbonwatch.

    python examples/train_mlp.py --epochs 3 --steps-per-epoch 200            # in-code API, local mode
    carbonwatch run --user alice --model mlp -- python examples/train_mlp.py  # wrapped: same script

With PyTorch installed it trains a 2-layer MLP on a fixed random regression task; without it, a pure-Python
logistic regression that still burns CPU. Either way it reports epochs, samples, loss and the phase.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from typing import Any

import carbonwatch


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep per step (stretch a demo run)")
    p.add_argument("--no-torch", action="store_true", help="use the pure-Python fallback even with torch")
    p.add_argument("--user")
    p.add_argument("--model", default="mlp")
    p.add_argument("--project", default="examples")
    p.add_argument("--budget-grams", type=float)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def torch_steps(args: argparse.Namespace) -> Any:
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    x_dim = 32
    true_w = torch.randn(x_dim, 1)
    model = torch.nn.Sequential(torch.nn.Linear(x_dim, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> tuple[int, Any]:
        x = torch.randn(args.batch_size, x_dim)
        y = x @ true_w
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        return args.batch_size, loss

    def evaluate() -> float:
        with torch.no_grad():
            x = torch.randn(512, x_dim)
            return float(torch.nn.functional.mse_loss(model(x), x @ true_w))

    return step, evaluate


def python_steps(args: argparse.Namespace) -> Any:
    rng = random.Random(args.seed)
    dim = 16
    true_w = [rng.gauss(0, 1) for _ in range(dim)]
    w = [0.0] * dim

    def sample() -> tuple[list[float], float]:
        x = [rng.gauss(0, 1) for _ in range(dim)]
        return x, 1.0 if sum(a * b for a, b in zip(x, true_w, strict=True)) > 0 else 0.0

    def step() -> tuple[int, float]:
        total = 0.0
        grad = [0.0] * dim
        for _ in range(args.batch_size):
            x, y = sample()
            p = 1 / (1 + math.exp(-max(-30.0, min(30.0, sum(a * b for a, b in zip(x, w, strict=True))))))
            total -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
            for i in range(dim):
                grad[i] += (p - y) * x[i]
        for i in range(dim):
            w[i] -= 0.1 * grad[i] / args.batch_size
        return args.batch_size, total / args.batch_size

    def evaluate() -> float:
        return float(step()[1])

    return step, evaluate


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.no_torch:
            raise ImportError
        step, evaluate = torch_steps(args)
        backend = "torch"
    except ImportError:
        step, evaluate = python_steps(args)
        backend = "python"
    with carbonwatch.run(user=args.user, model=args.model, project=args.project, budget_grams=args.budget_grams,
                         total_epochs=args.epochs) as run:
        loss: Any = None
        for epoch in range(args.epochs):
            run.epoch(epoch)
            run.phase("train")
            for _ in range(args.steps_per_epoch):
                n, loss = step()
                run.progress(samples=n, loss=loss)
                if args.sleep:
                    time.sleep(args.sleep)
            run.phase("eval")
            run.log(eval_loss=evaluate())
        final = loss.item() if hasattr(loss, "item") else loss
        print(f"train_mlp: {backend}, {args.epochs} epochs, final loss {final:.4f}, run {run.run_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
