"""families: one configuration per strategy family of a sweep file, for the per-strategy
cost measurement of the long-context bench.

    python3 bench/families.py SWEEP [KEEP]      (KEEP defaults to 0.25)

A family is the chain of strategy names of a line ('knorm', 'knorm+quant', ...); the first
line of each family is taken, and each comma list is reduced to one value: KEEP for keep=
when the list holds it, else the list's first value. Prints 'family<TAB>configuration'
lines in the order the families first appear.
"""
import sys


def one_value(key, values, keep):
    return keep if key == "keep" and keep in values else values[0]


def reduce_part(part, keep):
    words = part.split()
    out = [words[0]]
    for w in words[1:]:
        k, eq, v = w.partition("=")
        out.append(f"{k}={one_value(k, v.split(','), keep)}" if eq else w)
    return " ".join(out)


def main(argv):
    if len(argv) not in (1, 2):
        sys.exit("usage: families.py SWEEP [KEEP]")
    keep = argv[1] if len(argv) == 2 else "0.25"
    seen = set()
    with open(argv[0]) as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p.strip() for p in line.split("+")]
            family = "+".join(p.split()[0] for p in parts)
            if family in seen:
                continue
            seen.add(family)
            print(f"{family}\t{' + '.join(reduce_part(p, keep) for p in parts)}")


if __name__ == "__main__":
    main(sys.argv[1:])
