"""Command line: argparse -> Config -> mode dispatch. Nothing else lives here."""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from pathlib import Path

from medfusion.config import ConfigError, load_config, parse_set

MODES = ("search", "review", "check_data", "predict", "explain", "plan")

# flag -> dotted config key; flags override the config file, --set overrides both
FLAG_KEYS = {
    "data_dir": "data.data_dir",
    "cv_folds": "search.cv_folds",
    "data_percentage": "search.data_percentage",
    "modalities": "search.modalities",
    "combinations": "search.combinations",
    "seed": "search.seed",
    "run_name": "runtime.run_name",
    "device_mode": "runtime.device_mode",
    "gpus": "runtime.gpus",
    "cpu_replicas": "runtime.cpu_replicas",
    "verbosity": "runtime.verbosity",
    "resume_mode": "runtime.resume_mode",
    "deterministic": "runtime.deterministic",
    "folds": "search.folds_file",
    "selection": "search.selection",
    "test_fraction": "search.test_fraction",
    "test_patients": "search.test_patients_file",
    "executor": "runtime.executor",
    "ray_address": "runtime.ray_address",
    "cpus_per_job": "runtime.cpus_per_job",
    "gpus_per_job": "runtime.gpus_per_job",
    "memory_per_job_gb": "runtime.memory_per_job_gb",
    "job_retries": "runtime.job_retries",
}


def _add_executor_flags(p: argparse.ArgumentParser) -> None:
    """Where a search's jobs run (executors.py, docs/ray.md)."""
    p.add_argument("--executor", choices=("inline", "ray"),
                   help="inline: jobs one by one in this process (default); ray: jobs as Ray tasks, on a local Ray "
                        "instance or the cluster of --ray_address (docs/ray.md)")
    p.add_argument("--ray_address", "--ray-address",
                   help="with --executor ray: 'auto', host:port or ray://host:port joins a running cluster "
                        "(default: $RAY_ADDRESS if set, else a new local instance sized to this machine)")
    p.add_argument("--cpus_per_job", "--cpus-per-job", type=int,
                   help="with --executor ray: CPUs per job (default 1 without GPUs, else the CPUs per GPU)")
    p.add_argument("--gpus_per_job", "--gpus-per-job", type=int,
                   help="with --executor ray: GPUs per job (default 1 when the cluster has GPUs, else 0)")
    p.add_argument("--memory_per_job_gb", "--memory-per-job-gb", type=float,
                   help="with --executor ray: memory Ray reserves per job, in GB (default 0: none); a three-branch "
                        "EfficientNetB3 Stage 2 at 224 px holds ~10 GB on a CPU (docs/ray.md)")
    p.add_argument("--job_retries", "--job-retries", type=int,
                   help="run a job that raises again this many times before reporting it (default 1)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python main.py",
        description="medfusion: multimodal fusion (metadata forest + image branches) with patient-level CV.")
    p.add_argument("--mode", choices=MODES, default="search",
                   help="search: train and evaluate every combination x fold (default); review: health checks, "
                        "plots and report of logs/<run_name>; check_data: validate a dataset without training; "
                        "predict: apply a finished run's fold ensemble to --data_dir; explain: saliency, metadata "
                        "importance and modality contribution of a finished run (docs/explain.md); plan: the search's "
                        "graph of jobs (counts, critical path) without running it")
    p.add_argument("--combination", help="with --mode predict: the combination whose fold bundles predict "
                                         "(default: the run's best by visit_qwk_mean)")
    p.add_argument("--samples", type=int, default=3, help="with --mode explain: validation samples per class and "
                                                          "fold (most confident correct, wrong, least confident)")
    p.add_argument("--method", choices=("gradcam", "gradcam++", "integrated_gradients"), default="gradcam",
                   help="with --mode explain: the saliency method")
    p.add_argument("--target_layer", "--target-layer", help="with --mode explain: the backbone layer Grad-CAM reads "
                                                            "(default: the backbone's last feature map)")
    p.add_argument("--out", help="with --mode predict: output folder (default logs/<run>/predict/<data folder>/)")
    p.add_argument("--strict", action="store_true",
                   help="with --mode review: exit 1 when any finding has severity error")
    p.add_argument("--config", default="configs/default.yaml", help="YAML config (default: configs/default.yaml)")
    p.add_argument("--data_dir", "--data-dir", help="dataset folder in the DATA_FORMAT layout (overrides data.data_dir)")
    p.add_argument("--cv_folds", "--cv-folds", type=int, help="number of patient-level folds")
    p.add_argument("--data_percentage", "--data-percentage", type=float,
                   help="use this %% of patients (stratified) before folding")
    p.add_argument("--run_name", "--run-name", help="run folder name under logs/ (default: the config file name)")
    p.add_argument("--modalities", help="comma list, e.g. metadata,depth_rgb,thermal_map")
    p.add_argument("--combinations", help="comma list of '+'-joined combinations, e.g. metadata+depth_rgb,metadata")
    p.add_argument("--device_mode", "--device-mode", choices=("cpu", "single", "multi", "custom"))
    p.add_argument("--gpus", help="GPU indices for --device_mode custom, e.g. 0,1")
    p.add_argument("--cpu_replicas", "--cpu-replicas", type=int,
                   help="split the CPU into N logical devices and use MirroredStrategy over them")
    p.add_argument("--verbosity", type=int, choices=range(4), help="0 quiet .. 3 debug with tracebacks")
    p.add_argument("--seed", type=int, help="seed for folds, forest and training")
    p.add_argument("--resume_mode", "--resume-mode", choices=("auto", "fresh", "from_models", "from_predictions"),
                   help="auto: continue the named run (default); fresh: restart it, keeping the old folder aside; "
                        "from_models / from_predictions: recompute outputs without training")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="TensorFlow op determinism: identical results for the same seed on the same machine")
    p.add_argument("--folds", help="use this fold assignment (JSON: sample_id -> fold as in folds.json, or "
                                   "patient -> fold) instead of computing one")
    p.add_argument("--selection", choices=("inner", "outer"),
                   help="inner (default): a patient-level part of each training fold makes every choice; outer: "
                        "the reported fold chooses (the reference study's optimistic protocol, for comparison)")
    p.add_argument("--test_fraction", "--test-fraction", type=float,
                   help="set this fraction of the patients aside (stratified, seeded) before folding; after the search "
                        "the best combination's fold ensemble predicts them once")
    p.add_argument("--test_patients", "--test-patients",
                   help="file of held-out test patient numbers (one per line), instead of --test_fraction")
    _add_executor_flags(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.stage2.lr=1e-5 (repeatable)")
    return p


def resolve_config(args: argparse.Namespace):
    overrides = {}
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    for item in args.set:
        key, value = parse_set(item)
        overrides[key] = value
    return load_config(args.config, overrides)


def _resume_command(argv) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--resume_mode", "--resume-mode"):
            skip = True
            continue
        if a.startswith("--resume_mode=") or a.startswith("--resume-mode="):
            continue
        cleaned.append(a)
    return " ".join(cleaned + ["--resume_mode", "auto"])


def _sigterm_to_interrupt(signum, frame):
    _interrupt(signum, frame)  # a preempted node gets the same clean stop as Ctrl-C


def _quiet_interrupts(unraisable) -> None:
    """A Ctrl-C that lands in a __del__ is swallowed by Python with a traceback; the flag _interrupt set stops the
    search at the next job (executors.py), so the traceback is noise. Every other unraisable error is printed."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        return
    sys.__unraisablehook__(unraisable)


def _interrupt(signum, frame):
    # remembered, because TensorFlow can turn the KeyboardInterrupt raised inside one of its callbacks into an
    # ordinary error, which must then stop the search rather than count as a job failure to retry
    from medfusion.stopping import mark_interrupted

    mark_interrupted()
    raise KeyboardInterrupt


def _run_light_mode(args, cfg, log) -> int:
    """review and check_data: no TensorFlow needed."""
    try:
        if args.mode == "plan":
            from medfusion.plan import run_plan

            return run_plan(cfg, log)
        if args.mode == "review":
            from medfusion.review import run_review

            return run_review(Path(cfg.runtime.logs_dir) / cfg.runtime.run_name, strict=args.strict, log=log)
        from medfusion.data.check import run_check_data

        return run_check_data(cfg, log)
    except (ValueError, FileNotFoundError, OSError) as exc:
        log.error("error: %s", exc)
        return 2


def _run_tf_mode(args, cfg) -> int:
    if args.mode == "predict":
        if args.data_dir is None:
            raise ValueError("--mode predict needs --data_dir: the folder of the patients to predict")
        from medfusion.predict import run_predict

        return run_predict(Path(cfg.runtime.logs_dir) / cfg.runtime.run_name, args.data_dir, args.combination,
                           args.out)
    if args.mode == "explain":
        from medfusion.explain.run import run_explain

        return run_explain(Path(cfg.runtime.logs_dir) / cfg.runtime.run_name, args.combination, args.samples,
                           args.method, args.target_layer)
    from medfusion.search import Search
    from medfusion.training.devices import configure_strategy

    Search(cfg, configure_strategy(cfg.runtime)).run()
    return 0


def _data_dir_problem(args, cfg) -> str | None:
    if args.data_dir is None or Path(args.data_dir).is_dir():
        return None
    what = "is a file, not a folder" if Path(args.data_dir).exists() else "does not exist"
    return (f"--data_dir {args.data_dir!r} {what}; pass the folder that holds metadata.csv"
            + (" (the demo is generated only into data.demo_dir "
               f"{cfg.data.demo_dir!r}: leave out --data_dir to use it)" if cfg.data.demo else ""))


def main(argv=None) -> int:
    import signal

    from medfusion.stopping import clear_interrupted

    clear_interrupted()  # a process that calls main() twice (tests) starts each search afresh
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # an ignored SIGINT (nohup, &) stays ignored
        signal.signal(signal.SIGINT, _interrupt)
    sys.unraisablehook = _quiet_interrupts
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = _data_dir_problem(args, cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from medfusion.runs import setup_console

    log = setup_console(cfg.runtime.verbosity)
    if args.mode in ("review", "check_data", "plan"):
        return _run_light_mode(args, cfg, log)
    from medfusion.training.devices import configure_tensorflow

    configure_tensorflow(cfg)
    try:
        return _run_tf_mode(args, cfg)
    except KeyboardInterrupt:
        log.error("interrupted: every finished job and the last completed epoch of the running stage are saved "
                  "in %s/%s.\nResume with the same command and --resume_mode auto (the default), e.g.\n"
                  "  python main.py %s", cfg.runtime.logs_dir, cfg.runtime.run_name, _resume_command(argv))
        return 130
    except (ConfigError, ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        if cfg.runtime.verbosity >= 3:
            traceback.print_exc()
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            log.error("error: the disk is full (%s). Every file is written atomically, so the run folder is intact: "
                      "free some space and continue with\n  python main.py %s", exc.filename or exc,
                      _resume_command(argv))
            return 2
        log.error("error: %s", exc)
        for handler in log.handlers:  # flush, not logging.shutdown(): that closes streams others (pytest) own
            handler.flush()
        return 2
