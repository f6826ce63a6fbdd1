"""The paper's table in miniature (see experiments/toy_table.py for what each step does).

    python scripts/reproduce_table.py --world toy            # trains (or reuses) every row, then the table
    python scripts/reproduce_table.py --world toy --rows interact,boxes   # only these rows now (a part)
    python scripts/reproduce_table.py --world toy --rows samplers   # the samplers, on the embedded model
    python scripts/reproduce_table.py --world hico --generate test_layouts.json --sd_ckpt v1-4.ckpt \\
        --gligen_ckpt gligen-generation-text-box.pth --interact_ckpt interact-diffusion-v1.pth   # the 3 rows
    python scripts/reproduce_table.py --world hico --real HICO/images/test2015 --gt test_hico.json \\
        --train trainval_hico.json --weights pt_inception-2015-12-05-6726825d.pth \\
        --row "GLIGEN" gen/gligen dets/gligen.pkl --row "InteractDiffusion" gen/id dets/id.pkl --format fgahoi
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
DEFAULT_DATA = "data/toy"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", choices=("toy", "hico"), default="toy")
    toy = p.add_argument_group("toy world")
    toy.add_argument("--rows", default=None,
                     help="comma-separated row keys to train, generate and score now (default: every trained row; "
                          "'samplers': the sampler rows on the embedded model); the table is "
                          "assembled from every row scored so far")
    toy.add_argument("--n", type=int, default=250, help="test layouts generated per row and seed")
    toy.add_argument("--bootstrap", type=int, default=200, help="bootstrap draws of the layouts for the intervals")
    toy.add_argument("--no-train", dest="train", action="store_false",
                     help="skip rows whose runs are not trained yet instead of training them")
    toy.add_argument("--gain_n", type=int, default=200, help="test samples for the layout gain of each seed")
    toy.add_argument("--data", default=DEFAULT_DATA, help="the toy world's folder (generated there when it is the "
                     "default and missing; another folder must hold it, or pass --make-data)")
    toy.add_argument("--make-data", action="store_true", help="generate the toy world in --data when it is not there")
    toy.add_argument("--runs", default="runs", help="where the rows' training runs live")
    toy.add_argument("--out", default="runs/table_toy")
    toy.add_argument("--device", default=None)
    real = p.add_argument_group("real runs (--world hico)")
    real.add_argument("--row", nargs=3, action="append", metavar=("NAME", "IMAGES", "DETECTIONS"),
                      help="a row: generated image folder and the detector's output on it (repeatable)")
    real.add_argument("--real", help="real test image folder (FID/KID reference)")
    real.add_argument("--gt", help="test_hico.json")
    real.add_argument("--train", help="trainval_hico.json (rare = fewer than 10 training instances)")
    real.add_argument("--categories", help="a categories.json instead of --train")
    real.add_argument("--ceiling", help="the detector's output on the real test images")
    real.add_argument("--format", choices=("json", "fgahoi"), default="json")
    real.add_argument("--allow-pickle", action="store_true")
    real.add_argument("--extractor", default="inception")
    real.add_argument("--protocol", choices=("interactdiffusion",), default=None,
                      help="FID/KID as the paper computed them (torch-fidelity's; fixes the extractor)")
    real.add_argument("--weights", help="feature extractor weights (pt_inception-2015-12-05-6726825d.pth)")
    gen = p.add_argument_group("generating the paper's three rows (--world hico --generate LAYOUTS)")
    gen.add_argument("--generate", metavar="LAYOUTS", help="a layouts file: generate the SD, GLIGEN and "
                     "InteractDiffusion rows into --gen_out (same seeds), then stop; run the detector on them")
    gen.add_argument("--gen_out", default="runs/table_hico")
    gen.add_argument("--sd_ckpt", help="SD v1.x file or diffusers folder (the SD row, and the backbone)")
    gen.add_argument("--gligen_ckpt", help="GLIGEN box + text checkpoint")
    gen.add_argument("--interact_ckpt", help="InteractDiffusion checkpoint (or interaction weights)")
    gen.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.generate:
        missing = [f for f in ("sd_ckpt", "gligen_ckpt", "interact_ckpt") if not getattr(args, f)]
        if missing:
            p.error(f"--generate needs {', '.join('--' + m for m in missing)}")
        return args
    if args.world == "hico" and not (args.row and args.real and args.gt):
        p.error("--world hico needs --real, --gt and at least one --row NAME IMAGES DETECTIONS")
    if args.n < 2:
        p.error(f"--n {args.n}: needs at least 2 layouts")
    if args.gain_n < 1:
        p.error(f"--gain_n {args.gain_n}: needs at least 1 sample")
    if args.bootstrap < 10:
        p.error(f"--bootstrap {args.bootstrap}: needs at least 10 draws")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from evaluation.table_stats import comparison_table, markdown_table, variant_table
    from experiments.hico_table import run_hico
    from experiments.toy_table import ROW_NAMES, run_toy, select_rows
    try:
        if args.generate:
            from experiments.hico_table import generate_rows
            from interact.batch import BatchError
            try:
                folders = generate_rows(args.generate, args.gen_out, args.sd_ckpt, args.gligen_ckpt,
                                        args.interact_ckpt, args.seed, device=args.device or "auto")
            except BatchError as err:
                raise ValueError(str(err)) from None
            for name, folder in folders.items():
                print(f"{name}: {folder}")
            return 0
        if args.world == "toy":
            results = run_toy(select_rows(args.rows), args.n, args.data, args.runs, args.out, args.device, args.gain_n,
                              args.bootstrap, args.train, make_data=args.make_data or args.data == DEFAULT_DATA)
            meta = results["_meta"]
            print(f"\n{args.n} toy test layouts per row; {meta['seconds'] / 60:.1f} min; written to "
                  f"{args.out}/table.md" + (f"; rows not scored yet: {', '.join(meta['missing'])}" if meta["missing"]
                                            else "") + "\n")
        else:
            results = run_hico(args.row, args.real, args.gt, args.train, args.categories, args.extractor,
                               args.weights, args.format, args.allow_pickle, args.ceiling,
                               protocol=args.protocol)
    except (ValueError, OSError) as err:     # OSError: a missing, unreadable or unwritable path
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    print(comparison_table(results, ROW_NAMES))
    if any("layout_gain" in r for k, r in results.items() if not k.startswith("_")):
        print(variant_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
