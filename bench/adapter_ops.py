"""B5: adapter load, switch, merge and hotswap time, peftkit beside peft."""

from __future__ import annotations

import copy

from common import Setup, lora_models, timed_round_robin


def bench_adapter_ops(setup: Setup, reps: int) -> list[tuple[str, float, float]]:
    """B5: load an adapter onto a base, switch between two adapters, merge+unmerge, hotswap; ms per op."""
    import tempfile

    import peft
    from peft.utils.hotswap import hotswap_adapter as peft_hotswap

    import peftkit

    theirs, ours = lora_models(setup, 0.0)
    folder = tempfile.mkdtemp()
    theirs.save_pretrained(folder)
    libs = {"peft": (peft, theirs), "peftkit": (peftkit, ours)}
    for lib, model in libs.values():
        model.load_adapter(folder, adapter_name="second")
    rows = []
    # fresh base copies made beforehand, so that loading is timed without the copy
    bases = {name: [copy.deepcopy(setup.base) for _ in range(reps + 1)] for name in libs}
    ops = {
        "load adapter": lambda name, lib, m: lib.PeftModel.from_pretrained(bases[name].pop(), folder),
        "set_adapter x2": lambda name, lib, m: (m.set_adapter("second"), m.set_adapter("default")),
        "merge+unmerge": lambda name, lib, m: (m.merge_adapter(), m.unmerge_adapter()),
        # the same file into the active adapter: read, checked and copied in place
        "hotswap": lambda name, lib, m: swaps[name](m, folder, "default"),
    }
    swaps = {"peft": lambda m, f, n: peft_hotswap(m, f, n, torch_device=str(setup.device)),
             "peftkit": peftkit.hotswap_adapter}
    for op, fn in ops.items():
        fns = {name: (lambda name=name, lib=lib, m=m: fn(name, lib, m)) for name, (lib, m) in libs.items()}
        times = timed_round_robin(fns, setup.device, 1, reps)
        rows.append((op, times["peft"] * 1e3, times["peftkit"] * 1e3))
    return rows


def run(setup: Setup, warmup: int, reps: int) -> None:
    rows = bench_adapter_ops(setup, reps)
    print("\nB5  adapter operations (ms, median)")
    print(f"{'':16s} {'peft':>9s} {'peftkit':>9s} {'ratio':>7s}")
    for op, a, b in rows:
        print(f"{op:16s} {a:9.1f} {b:9.1f} {b / a:7.2f}")
