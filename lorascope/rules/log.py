"""`log.*`: what the trainer's own text log says went wrong."""
from __future__ import annotations

from lorascope.model import Finding, LogEvent, Run
from lorascope.rules.registry import Params, rule


def _where(e: LogEvent) -> str:
    return f"{e.file}:{e.line}: {e.text}"


def _unique(events: list[LogEvent]) -> list[LogEvent]:
    """One event per distinct message (several ranks print the same error)."""
    seen: set[str] = set()
    out = []
    for e in events:
        key = e.text.strip()
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _files(events: list[LogEvent]) -> list[str]:
    return sorted({e.file for e in events})


def _count(v) -> int | None:
    """A positive count from config (int, or a float/str holding one)."""
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f == int(f) and f > 0 else None


def _of(run: Run, kind: str) -> list[LogEvent]:
    return sorted((e for e in run.events if e.kind == kind), key=lambda e: (e.file, e.line))


def _evidence(shown, p: Params) -> list[str]:
    """The offending log lines as "file:line: text", capped, with a count of the rest."""
    ev = [_where(e) for e in shown[: p["max_evidence"]]]
    if len(shown) > len(ev):
        ev.append(f"... and {len(shown) - len(ev)} more such lines")
    return ev


@rule("log.base_model_not_loaded", needs=("events",))
def log_base_model_not_loaded(run: Run, p: Params) -> list[Finding]:
    """The trainer did not load the base model (random init or a missing path).

    ## What it detects
    Lines of the trainer's log showing that the pretrained weights never arrived:
    `OSError: ... is not a local folder and is not a valid model identifier`,
    `Can't load the model for '...'`, `no file named model.safetensors ... found in
    directory`, kohya's `model is not found as a file or in Hugging Face`, a
    `FileNotFoundError` on a weights or config file, or transformers'
    `Some weights of X were not initialized from the model checkpoint ... newly
    initialized` naming layers of the model body. A new task head alone
    (`classifier.weight`, `score.weight`) is expected and does not count.

    ## Why it matters
    Either the run crashed before training, or — worse — it trained a LoRA on top of
    randomly initialised layers: the loss starts near `ln(vocab size)`, falls slowly,
    and the adapter is useless with the real base model.

    ## Example
    `train.log:12: OSError: /root/autodl-tmp/Qwen2-7B is not a local folder and is not
    a valid model identifier listed on 'https://huggingface.co/models'` — the path of
    another machine copied in the config.

    ## Fix
    Point the config's base model (`model_name_or_path`, `pretrained_model_name_or_path`)
    at a folder that exists on this machine, or a hub id you can download; for
    "newly initialized" body layers, load the model with the class and revision its
    checkpoint was saved with. No setting change can be applied automatically.
    """
    bad = _of(run, "base_model_not_loaded")
    if not bad:
        return []
    shown = _unique(bad)
    ev = _evidence(shown, p)
    severity = None
    last = bad[-1]
    ok_later = [e for e in run.events if e.kind == "base_model_loaded" and e.file == last.file
                and e.line > last.line and ("model" in e.data or "part" in e.data)]
    if ok_later and p["downgrade_if_loaded_later"]:
        severity = "warning"
        ev.append(f"a later attempt loaded it: {_where(ok_later[0])}")
    path = next((e.data.get("path") for e in bad if e.data.get("path")), None)
    n_init = next((e.data.get("newly_initialized") for e in bad if e.data.get("newly_initialized")), None)
    if n_init:
        title = f"{n_init} layers of the base model were randomly initialized, not loaded"
    elif path:
        title = f"The base model was not loaded: {path}"
    else:
        title = "The base model was not loaded"
    return [p.finding(title=title, severity=severity, evidence=ev, files=_files(bad))]


@rule("log.no_trainable_params", needs=("events",))
def log_no_trainable_params(run: Run, p: Params) -> list[Finding]:
    """0 trainable parameters: no adapter was injected.

    ## What it detects
    The trainer reports zero trainable parameters (`trainable params: 0 || all
    params: ...`, `Number of trainable parameters = 0`, kohya `create LoRA for U-Net:
    0 modules` with no text-encoder modules either), or training stops with
    `optimizer got an empty parameter list` / `element 0 of tensors does not require
    grad and does not have a grad_fn`.

    ## Why it matters
    Nothing is being learned: the loss cannot improve, the saved adapter is empty or
    equals its initialisation, and the compute is wasted.

    ## Example
    `train.log:88: trainable params: 0 || all params: 1,100,048,384 || trainable%:
    0.0000` — `target_modules: ["q", "v"]` matched no layer of a Llama model, whose
    projections are called `q_proj` / `v_proj`.

    ## Fix
    Make the adapter's target modules match the model's layer names (print
    `model.named_modules()`, or use `all-linear` / LLaMA-Factory `lora_target: all`),
    check that the adapter is attached before the optimizer is built, and with
    gradient checkpointing call `enable_input_require_grads()`. Which names are right
    depends on the model, so no setting is changed automatically.
    """
    bad = _of(run, "no_trainable_params")
    if not bad:
        return []
    shown = _unique(bad)
    ev = _evidence(shown, p)
    tm = run.config.get("target_modules")
    if tm:
        ev.append(f"target_modules = {tm!r}")
    reasons = {e.data.get("reason") for e in bad}
    if reasons <= {"loss does not require grad"}:
        title = "Training failed: the loss does not depend on any trainable parameter"
    else:
        title = "No trainable parameters: the adapter was not injected"
    return [p.finding(title=title, evidence=ev, files=_files(bad))]


@rule("log.oom", needs=("events",))
def log_oom(run: Run, p: Params) -> list[Finding]:
    """Out-of-memory errors in the trainer log.

    ## What it detects
    Allocator failures printed by the trainer: `torch.OutOfMemoryError: CUDA out of
    memory. Tried to allocate ...`, `CUDA error: out of memory`, `DefaultCPUAllocator:
    can't allocate memory`, `MPS backend out of memory`. TensorFlow/XLA noise such as
    `E0000 ... Unable to register cuDNN factory` is ignored.

    ## Why it matters
    The run crashed (or, with `auto_find_batch_size`, silently restarted with another
    batch size); curves end early and the last checkpoint is older than the plan.

    ## Example
    `train.log:2045: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate
    2.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which 1.19 GiB is free.`

    ## Fix
    Halve the per-device batch size and double gradient accumulation (the effective
    batch stays the same); at batch size 1 turn on gradient checkpointing. Shorter
    sequences (`cutoff_len`), lower resolution, 8-bit optimizers or QLoRA also help
    but change the training itself, so they are only suggested here.
    """
    ooms = _of(run, "oom")
    if not ooms:
        return []
    shown = _unique(ooms)
    ev = [_where(e) for e in shown[: p["max_evidence"]]]
    if len(shown) > len(ev):
        ev.append(f"... and {len(shown) - len(ev)} more such lines")
    fix: dict = {}
    bs = run.config.get("batch_size")
    ga = run.config.get("grad_accum")
    bs = _count(bs)
    ga = _count(ga)
    if bs is not None and bs > 1:
        fix["batch_size"] = bs // 2
        fix["grad_accum"] = (ga or 1) * 2      # (bs // 2) * (2 * ga): the same effective batch
        ev.append(f"batch_size {bs}, grad_accum {ga if ga is not None else 'unknown (1 assumed)'}")
    elif bs == 1 and run.config.get("gradient_checkpointing") is not True:
        fix["gradient_checkpointing"] = True
        ev.append("batch_size is already 1")
    first = ooms[0]
    tried = first.data.get("tried")
    title = f"Out of memory at {first.file}:{first.line}"
    if tried:
        title += f" (tried to allocate {tried})"
    if len(shown) > 1:
        title += f", {len(shown)} distinct OOM messages"
    return [p.finding(title=title, evidence=ev, fix=fix, files=_files(ooms))]
