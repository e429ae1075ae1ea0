"""python -m data_tools prepare DATASET --out DIR [options] | audit DIR [--write] | fetch smollm2|recbole"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from data_tools import amazon, audit, cold, collm, log, movielens, named
from data_tools.named import AMAZON_BOOKS_DIR, ML1M_COLLM_ZIP, NAMED
from sasrecllm_jax import downloads
from sasrecllm_jax.data.dataset import check_replaceable, load_dataset, write_dataset
from sasrecllm_jax.errors import DataError, run_command

COLD_HELP = ("hold a seeded share FRAC of the items that occur in valid/test out of training (their train rows "
             "dropped, filtered out of train histories), so every row on them is a new-item row (default: none)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_tools", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build a canonical dataset folder")
    ds = prep.add_subparsers(dest="dataset", required=True)

    def add(name, help, seed_help="seed of --cold-items"):
        q = ds.add_parser(name, help=help, description=help)
        q.add_argument("--out", type=Path, required=True, help="output folder (must not exist, or pass --overwrite)")
        q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        q.add_argument("--cold-items", metavar="FRAC", help=COLD_HELP)
        q.add_argument("--seed", type=int, default=0, help=seed_help)
        return q

    q = add("ml1m-collm", "CoLLM's processed MovieLens-1M zip of pickles")
    q.add_argument("--source", type=Path, default=ML1M_COLLM_ZIP, help="ml-1m.zip from CoLLM (default: the shared copy)")
    q.add_argument("--trust-pickle", action="store_true",
                   help="allow loading the pickles inside (not needed for CoLLM's own zip, known by its sha256)")
    q = add("ml1m", "raw GroupLens MovieLens-1M through CoLLM's recipe")
    q.add_argument("--source", type=Path, help="folder with ratings.dat + movies.dat, or ml-1m.zip "
                   "(default: download from GroupLens, md5-checked)")
    q = add("ml100k", "MovieLens-100K from the recbole==1.2.1 wheel")
    q.add_argument("--valid-frac", type=float, default=0.1)
    q.add_argument("--test-frac", type=float, default=0.1)
    q.add_argument("--wheel", type=Path, help="a local recbole-1.2.1 wheel (default: pip download)")
    q = add("log", "your own interaction log + item table", "seed of the sampled negatives and of --cold-items")
    q.add_argument("--valid-frac", type=float, default=0.1)
    q.add_argument("--test-frac", type=float, default=0.1)
    q.add_argument("--interactions", type=Path, required=True, help="CSV/TSV/Parquet: user,item,timestamp[,rating]")
    q.add_argument("--items", type=Path, required=True, help="CSV/TSV/Parquet: item,title")
    q.add_argument("--columns", metavar="NAME=COLUMN,...",
                   help="the interaction file's column for each of user, item, timestamp, rating; names not "
                        "given are read from a column of that name, e.g. --columns user=user_id,item=item_id,"
                        "timestamp=ts,rating=stars (with no rating column the log is positive-only)")
    q.add_argument("--item-columns", metavar="NAME=COLUMN,...",
                   help="the item table's column for item and title, e.g. --item-columns item=item_id,title=name")
    q.add_argument("--threshold", type=float, default=4.0,
                   help="label = rating >= threshold (default 4: 4 and 5 stars are likes)")
    q.add_argument("--negatives", type=int, default=0,
                   help="sampled negatives per positive, for a positive-only log (no rating column): the "
                        "positive's user, time and history, with an item that existed then and that the user "
                        "never interacted with")
    q.add_argument("--date-format", metavar="FORMAT",
                   help="the timestamp column's date format in strftime codes, e.g. '%%d/%%m/%%Y %%H:%%M' "
                        "(default: unix seconds, ISO 8601, or any format whose dates read the same day-first "
                        "and month-first)")
    q.add_argument("--missing-title", metavar="TEXT",
                   help="give items with an empty or missing title this placeholder (default: refuse them)")
    q = add("amazon-book", "CoLLM's Amazon-Book recipe")
    q.add_argument("--reviews", type=Path, required=True, help="Books_5.json.gz")
    q.add_argument("--meta", type=Path, required=True, help="meta_Books.json.gz")
    q = add("amazon-books", "Amazon Books, a positive-only log: 1 sampled negative per positive, global time "
            "split (valid 10%%, test 10%%), held-out items as in the named recipe",
            "seed of the sampled negatives and of --cold-items")
    q.add_argument("--source", type=Path, default=AMAZON_BOOKS_DIR,
                   help="folder with interactions.csv and items.csv (default: the shared copy)")
    q.set_defaults(named_cold=NAMED["amazon-books"].cold_items)

    a = sub.add_parser("audit", help="the leak audit of a prepared folder (AUC of label-free shortcuts)")
    a.add_argument("dir", type=Path)
    a.add_argument("--write", action="store_true", help="also rewrite the card's 'audit' entry")

    f = sub.add_parser("fetch", help="download a registry wheel into the cache")
    f.add_argument("what", choices=["smollm2", "recbole"])
    return p


def build(args) -> tuple:
    """The chosen source's (splits, items, source, recipe[, extra])."""
    if args.dataset == "ml1m-collm":
        return collm.prepare_collm(args.source, args.trust_pickle)
    if args.dataset == "ml1m":
        return movielens.prepare_ml1m(args.source)
    if args.dataset == "ml100k":
        return movielens.prepare_ml100k(args.wheel, args.valid_frac, args.test_frac)
    if args.dataset == "amazon-book":
        return amazon.prepare_amazon_book(args.reviews, args.meta)
    if args.dataset == "amazon-books":
        return named.amazon_books(args.source, seed=args.seed)
    return log.prepare_log(args.interactions, args.items, threshold=args.threshold, negatives=args.negatives,
                           seed=args.seed, valid_frac=args.valid_frac, test_frac=args.test_frac,
                           columns=args.columns, item_columns=args.item_columns, missing_title=args.missing_title,
                           date_format=args.date_format)


def prepare(args) -> dict:
    check_replaceable(args.out, args.overwrite)
    share = args.cold_items if args.cold_items is not None else getattr(args, "named_cold", None)
    frac = cold.cold_share(share)
    if getattr(args, "negatives", 0) < 0:
        raise DataError(f"--negatives {args.negatives}: give a count of sampled negatives per positive, 1 or more")
    splits, items, source, recipe, extra = named.finish(build(args), cold_items=frac, seed=args.seed)
    if "item" in items.columns:  # ids a command line splits cannot be given with --own-ids there
        split = items["item"].astype(str).str.contains(r"[\s,\"']")
        if split.any():
            extra["own_ids"] = {"items_a_command_line_splits": int(split.sum()),
                                "first": str(items["item"][split].iloc[0])}
    return write_dataset(args.out, splits, items, source=source, recipe=recipe, overwrite=args.overwrite,
                         extra=extra)


def summary(card: dict, out: Path) -> str:
    """What `prepare` prints: rows per split, every split's rows by cause, and the audit."""
    s = card["splits"]
    lines = [f"wrote {out}: " + ", ".join(f"{k} {v['rows']:,} rows" for k, v in s.items())
             + f"; {card['users']['count']:,} users, {card['items']['count']:,} items"]
    rule = re.search(r"label = (rating >= [\d.]+)", card.get("recipe", ""))
    lines.append("labels: " + (f"1 (a like) where {rule.group(1)}; " if rule else "") + "share of likes: " +
                 ", ".join(f"{k} {v['positive_rate']:.3f}" for k, v in s.items()))
    dropped = card.get("input", {}).get("duplicate_rows_dropped", 0)
    if dropped:
        lines.append(f"note: {dropped:,} repeated (user, item) row(s) collapsed to the first in time")
    neg = card.get("negatives", {})
    if neg.get("skipped"):
        lines.append(f"note: {neg['skipped']:,} of the {neg['sampled'] + neg['skipped']:,} negatives asked for were "
                     f"not drawn (no item left that existed then and the user never touched); positive rate "
                     f"{s['train']['positive_rate']:.3f} in train")
    split = card.get("own_ids", {})
    if split:
        lines.append(f"note: {split['items_a_command_line_splits']:,} item id(s) hold spaces, commas or quotes (the "
                     f"first: {split['first']!r}); score and recommend --own-ids split ids on those, so give such "
                     f"items by the dataset's iid (items.parquet maps them)")
    if "cold_items" in card:
        lines.append(f"held out of train: {card['cold_items']['items']:,} of the "
                     f"{card['cold_items']['of_valid_test_items']:,} valid/test items")
    lines.append("rows by cause against train (warm / new user / new item / both):")
    lines += [f"  {k:<12}" + " / ".join(f"{v['causes'][c]:,}" for c in ("warm", "new_user", "new_item", "both"))
              for k, v in s.items()]
    if "audit" in card:
        lines.append(audit.table(card["audit"]))
    return "\n".join(lines)


def run_audit(args) -> str:
    """`audit DIR`: the audit of a prepared folder as a table; with --write, stored in its card."""
    ds = load_dataset(args.dir)
    result = audit.audit(ds.splits)
    if args.write:
        path = args.dir / "dataset.json"
        card = json.loads(path.read_text())
        card["audit"] = result
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp, path)
    return audit.table(result)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    def body():
        if args.command == "fetch":
            print(downloads.smollm2_gguf() if args.what == "smollm2" else downloads.fetch_wheel(*downloads.RECBOLE))
        elif args.command == "audit":
            print(run_audit(args))
        else:
            print(summary(prepare(args), args.out))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
