"""The builder's merge, as tables: which pieces are one run, which config value wins,
which of several copies of a curve is kept, where epochs start.  Each row breaks when
the rule it names does."""
import numpy as np
import pytest

from lorascope import lineage
from lorascope.build import build_series, epoch_boundaries, merge_config, role_of
from lorascope.model import ConfigValue, Parsed, RawSeries, Series, Source


def raw(source, steps, values, tag="loss", wall0=None):
    steps = np.asarray(steps, np.int64)
    walls = None if wall0 is None else wall0 + np.arange(len(steps), dtype=float)
    return RawSeries(tag, steps, np.asarray(values, float), source, wall_times=walls)


def parsed(path, kind, *series, planned=None, config=()):
    p = Parsed(Source(path, kind, records=1), series=list(series), config=list(config))
    if planned:
        p.facts["planned_steps"] = planned
    return p


def is_loss(tag):
    return role_of(tag) == "train_loss"


def runs_of(*files):
    pieces = [pc for p in files for pc in lineage.split(p, is_loss)]
    lin = lineage.group(pieces)
    return [sorted({pc.path for pc in run}) for run in lin.runs], lin.evidence


S = np.arange(1, 51)


# -- lineage: which pieces are one run -------------------------------------------------------

def test_one_curve_written_by_two_writers_is_one_run():
    loss = 2.0 / np.sqrt(S)
    a = parsed("trainer_state.json", "trainer_state", raw("trainer_state.json", S, np.round(loss, 4)))
    b = parsed("trainer_log.jsonl", "trainer_log", raw("trainer_log.jsonl", S[::5], loss[::5]))
    runs, ev = runs_of(a, b)
    assert runs == [["trainer_log.jsonl", "trainer_state.json"]] and ev == []


def test_two_runs_from_step_one_are_two_runs():
    a = parsed("logs/events.A", "tfevents", raw("logs/events.A", S, 2.0 / np.sqrt(S), wall0=100.0))
    b = parsed("logs/events.B", "tfevents", raw("logs/events.B", S[:30], 3.0 / np.sqrt(S[:30]), wall0=900.0))
    runs, ev = runs_of(b, a)
    assert runs == [["logs/events.A"], ["logs/events.B"]]           # oldest first, by wall time
    assert len(ev) == 1 and "both start at step 1" in ev[0] and "different losses at step 1" in ev[0]


def test_resume_in_a_new_event_file_continues_the_run():
    # killed after step 53, resumed from the checkpoint at 40: steps 41-53 are re-done
    # with slightly different values (a fresh data-loader worker, fp nondeterminism)
    a = parsed("events.A", "tfevents", raw("events.A", np.arange(1, 54), 1.0 / np.arange(1, 54), wall0=0.0))
    s2 = np.arange(41, 101)
    b = parsed("events.B", "tfevents", raw("events.B", s2, 1.0 / s2 * 1.05, wall0=500.0))
    runs, ev = runs_of(a, b)
    assert runs == [["events.A", "events.B"]] and ev == []


def test_restart_inside_one_file_cuts_every_tag_at_the_same_place():
    steps = np.concatenate([np.arange(1, 51), np.arange(1, 31)])
    walls = np.arange(len(steps), dtype=float)
    loss = RawSeries("loss", steps, 1.0 / steps, "events.A", wall_times=walls)
    lr = RawSeries("learning_rate", steps, np.r_[np.full(50, 1e-4), np.full(30, 5e-4)], "events.A",
                   wall_times=walls)
    pieces = lineage.split(parsed("events.A", "tfevents", loss, lr), is_loss)
    assert [(pc.first, pc.last) for pc in pieces] == [(1, 50), (1, 30)]
    assert [float(next(r for r in pc.parsed.series if r.tag == "learning_rate").values.max())
            for pc in pieces] == [1e-4, 5e-4]
    lin = lineage.group(pieces)
    assert len(lin.runs) == 2 and "goes back from step 50 to step 1" in lin.evidence[0]
    # a resume that rewrites the tail (back to 41, not to the start) is not a restart
    steps = np.concatenate([np.arange(1, 51), np.arange(41, 61)])
    r = RawSeries("loss", steps, 1.0 / steps, "events.A", wall_times=np.arange(len(steps), dtype=float))
    assert len(lineage.split(parsed("events.A", "tfevents", r), is_loss)) == 1


def test_states_planned_for_different_totals_are_different_runs():
    # three deterministic runs (1, 2, 3 epochs) into one output dir: the same losses at the
    # same steps, but each checkpoint's trainer state plans another total
    loss = 2.0 / np.sqrt(np.arange(1, 271))
    files = [parsed(f"checkpoint-{n}/trainer_state.json", "trainer_state",
                    raw(f"checkpoint-{n}/trainer_state.json", np.arange(1, n + 1), np.round(loss[:n], 4)),
                    planned=n) for n in (60, 180, 270)]
    runs, ev = runs_of(*files)
    assert runs == [["checkpoint-60/trainer_state.json"], ["checkpoint-180/trainer_state.json"],
                    ["checkpoint-270/trainer_state.json"]]
    assert "planned for 60 and 180 steps" in ev[0]


def test_checkpoint_states_of_one_run_and_its_event_file_are_one_run():
    loss = 3.0 / np.sqrt(np.arange(1, 61))
    files = [parsed(f"checkpoint-{n}/trainer_state.json", "trainer_state",
                    raw(f"checkpoint-{n}/trainer_state.json", np.arange(1, n + 1), np.round(loss[:n], 4)),
                    planned=200) for n in (20, 40)]
    files.append(parsed("runs/events.X", "tfevents", raw("runs/events.X", np.arange(1, 54), loss[:53], wall0=0.0)))
    runs, _ = runs_of(*files)
    assert len(runs) == 1 and len(runs[0]) == 3


def test_without_wall_times_the_run_with_top_level_files_is_the_latest():
    a = parsed("checkpoint-900/trainer_state.json", "trainer_state",
               raw("checkpoint-900/trainer_state.json", S, 2.0 / np.sqrt(S)), planned=900)
    b = parsed("trainer_state.json", "trainer_state", raw("trainer_state.json", S[:40], 4.0 / np.sqrt(S[:40])),
               planned=40)
    runs, _ = runs_of(b, a)
    assert runs[-1] == ["trainer_state.json"]


def test_grouping_is_linear_in_the_number_of_copies():
    # 400 checkpoint states of one run: each compared with one representative, not all
    loss = np.round(1.0 / np.sqrt(np.arange(1, 401)), 4)
    files = [parsed(f"checkpoint-{n}/trainer_state.json", "trainer_state",
                    raw(f"checkpoint-{n}/trainer_state.json", np.arange(1, n + 1), loss[:n]), planned=400)
             for n in range(1, 401)]
    calls = []
    orig = lineage.copies
    try:
        lineage.copies = lambda a, b: calls.append(1) or orig(a, b)
        runs, _ = runs_of(*files)
    finally:
        lineage.copies = orig
    assert len(runs) == 1 and len(calls) < 2 * len(files)


# -- config precedence ---------------------------------------------------------------------

def cfg_file(path, kind, **values):
    return parsed(path, kind, config=[ConfigValue(k, v, path, k) for k, v in values.items()])


@pytest.mark.parametrize("files,want,origin", [
    # a training config beats what the trainer state records
    ([cfg_file("trainer_state.json", "trainer_state", batch_size=8),
      cfg_file("train.yaml", "config", batch_size=4)], 4, "train.yaml"),
    # a training config beats adapter_config.json, which beats safetensors metadata
    ([cfg_file("lora.safetensors", "safetensors", lora_rank=16),
      cfg_file("adapter_config.json", "config", lora_rank=8)], 8, "adapter_config.json"),
    ([cfg_file("adapter_config.json", "config", lora_rank=8),
      cfg_file("cfg/train.yaml", "config", lora_rank=32)], 32, "cfg/train.yaml"),
    # of two training configs the shallower one (the launch config, not a copy inside a
    # checkpoint) wins; of checkpoint copies, the latest checkpoint's
    ([cfg_file("checkpoint-10/training_args.json", "config", learning_rate=1e-3),
      cfg_file("training_args.json", "config", learning_rate=2e-4)], 2e-4, "training_args.json"),
    ([cfg_file("checkpoint-10/adapter_config.json", "config", lora_rank=4),
      cfg_file("checkpoint-90/adapter_config.json", "config", lora_rank=8)], 8, "checkpoint-90/adapter_config.json"),
])
def test_config_precedence(files, want, origin):
    cfg = merge_config(files)
    key = next(iter(files[0].config)).key
    assert cfg.get(key) == want and cfg.origins[key].file == origin


# -- duplicate series, text-log curves -------------------------------------------------------

def test_one_curve_from_several_writers_is_kept_once():
    loss = 2.0 / np.sqrt(S)
    ev = parsed("runs/ev", "tfevents", raw("runs/ev", S, loss, tag="train/loss", wall0=0.0))
    st = parsed("trainer_state.json", "trainer_state", raw("trainer_state.json", S, np.round(loss, 4)))
    lg = parsed("trainer_log.jsonl", "trainer_log", raw("trainer_log.jsonl", S, np.round(loss, 4)))
    c = build_series([ev, st, lg])
    assert [s.name for s in c.series if s.role == "train_loss"] == ["train/loss"]
    # a curve with other values is another curve, kept
    other = parsed("trainer_state.json", "trainer_state", raw("trainer_state.json", S, loss * 2))
    c = build_series([ev, other])
    assert len([s for s in c.series if s.role == "train_loss"]) == 2


def test_text_log_curves_only_when_nothing_structured_has_one():
    loss = 2.0 / np.sqrt(S)
    text = parsed("train.log", "text_log", raw("train.log", S, loss))
    ev = parsed("runs/ev", "tfevents", raw("runs/ev", S, loss * 1.1, tag="train/loss", wall0=0.0))
    assert [s.sources for s in build_series([text, ev]).series] == [("runs/ev",)]
    assert [s.sources for s in build_series([text]).series] == [("train.log",)]


def test_a_running_average_alone_becomes_the_train_loss_and_says_so():
    c = build_series([parsed("ev", "tfevents", raw("ev", S, 1.0 / S, tag="loss/average", wall0=0.0))])
    assert c.running_average and c.series[0].role == "train_loss"
    c = build_series([parsed("ev", "tfevents", raw("ev", S, 1.0 / S, tag="loss/average", wall0=0.0),
                             raw("ev", S, 1.0 / S, tag="loss/current", wall0=0.0))])
    assert not c.running_average and c.series[0].name == "loss/current"


# -- epoch boundaries ------------------------------------------------------------------------

def series(name, steps, values):
    return Series(name, role_of(name), np.asarray(steps, np.int64), np.asarray(values, float))


@pytest.mark.parametrize("curves,last,hint,want,spe", [
    # HF: the epoch counter at each step (60 steps per epoch)
    ([series("epoch", np.arange(1, 181), np.arange(1, 181) / 60)], 180, None, [61, 121], 60),
    # kohya before 2024: loss/epoch logged at step = epoch number
    ([series("loss/epoch", [1, 2, 3, 4, 5], [.3, .2, .2, .1, .1])], 300, None, [61, 121, 181, 241], 60),
    # kohya newer: loss/epoch_average at the global step that ended the epoch
    ([series("loss/epoch_average", [60, 120, 180], [.3, .2, .2])], 200, None, [61, 121, 181], 60),
    # nothing logged per epoch: the trainer's own count (planned / epochs) when known
    ([series("loss", np.arange(1, 101), np.ones(100))], 100, 25.0, [26, 51, 76], 25),
    ([series("loss", np.arange(1, 101), np.ones(100))], 100, None, [], None),
])
def test_epoch_boundaries(curves, last, hint, want, spe):
    got, got_spe = epoch_boundaries(curves, last, hint)
    assert got == want and (got_spe == pytest.approx(spe) if spe else got_spe is None)
