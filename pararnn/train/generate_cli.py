"""``python generate.py --workdir DIR [--prompt TEXT | --prompt-ids 1,2,3] [--max-new-tokens N]
[--temperature T] [--top-k K] [--seed S] [--step N]``: sample from a trained model.

The prompt is read with the parallel forward pass, then every new token costs one recurrent
step (O(1) time and memory per token). Text prompts use the run's tokenizer; synthetic-task
runs (parity, mqar) take token ids.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

from .config import ConfigError

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description="Sample from a trained pararnn model.")
    p.add_argument("--workdir", required=True, help="a training workdir (with checkpoints/)")
    p.add_argument("--prompt", default=None, help="text prompt (default: the tokenizer's end-of-document token)")
    p.add_argument("--prompt-ids", default=None, help="comma-separated token ids instead of --prompt")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    return p


def _prompt_ids(args, cfg, tokenizer) -> list[int]:
    if args.prompt is not None and args.prompt_ids is not None:
        raise ConfigError("give either --prompt or --prompt-ids, not both.")
    if args.prompt_ids is not None:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}.") from None
    elif args.prompt is not None:
        if tokenizer is None:
            raise ConfigError(f"this run trained on the synthetic task {cfg.data.source!r}, which has no text "
                              f"tokenizer; pass --prompt-ids.")
        ids = tokenizer.encode(args.prompt)
    else:
        ids = [tokenizer.eos_id if tokenizer is not None else 0]
    if not ids:
        raise ConfigError("the prompt is empty.")
    bad = [i for i in ids if not 0 <= i < cfg.model.vocab_size]
    if bad:
        raise ConfigError(f"prompt token ids {bad[:5]} are outside the model's vocabulary "
                          f"[0, {cfg.model.vocab_size}).")
    return ids


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        for name in ("max_new_tokens", "num_samples"):
            if getattr(args, name) < (0 if name == "max_new_tokens" else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {0 if name == 'max_new_tokens' else 1}, "
                                  f"got {getattr(args, name)}.")
        if args.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {args.temperature}.")
        import jax
        import jax.numpy as jnp

        from ..models import generate
        from .restore import load_trained
        from .tokenizer import load_tokenizer

        from .restore import CheckpointWarning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CheckpointWarning)
            cfg, model, step = load_trained(args.workdir, args.step)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        text_run = cfg.data.source not in ("parity", "mqar")
        tokenizer = load_tokenizer(cfg.data.tokenizer) if text_run else None
        ids = _prompt_ids(args, cfg, tokenizer)
        if args.top_k is not None and not 1 <= args.top_k <= cfg.model.vocab_size:
            raise ConfigError(f"--top-k must be in [1, {cfg.model.vocab_size}], got {args.top_k}.")
    except (ConfigError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return 130
    prompt = jnp.asarray([ids] * args.num_samples, jnp.int32)
    t0 = time.time()
    try:
        out = jax.device_get(generate(model, prompt, args.max_new_tokens, key=jax.random.key(args.seed),
                                      temperature=args.temperature, top_k=args.top_k))
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return 130
    seconds = time.time() - t0
    for row in out:
        if tokenizer is not None:
            print(tokenizer.decode(row))
        else:
            print(" ".join(str(int(t)) for t in row))
        print("-" * 40)
    print(json.dumps({"workdir": args.workdir, "step": step, "prompt_tokens": len(ids),
                      "new_tokens": args.max_new_tokens, "samples": args.num_samples,
                      "seconds_incl_compile": round(seconds, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
