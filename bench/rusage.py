"""rusage: run one command, report its wall time, CPU time and peak RSS (the child's own maxrss).

    python3 bench/rusage.py [--env K=V ...] [--csv FILE --tag TAG] -- CMD ARGS...

Prints "wall_s=<seconds> maxrss_mb=<MiB> rc=<status> cpu_s=<user+system seconds>" on
stderr's last line and appends tag,wall_s,maxrss_mb,rc,cpu_s to FILE (cpu_s last, so that
readers of the first four columns are unaffected). os.wait4 gives the rusage of exactly this child (and
its waited-for descendants), unlike RUSAGE_CHILDREN summed over everything.
"""
import os
import sys
import time


def main(argv):
    env = dict(os.environ)
    csv = tag = None
    quiet = False
    i = 0
    while i < len(argv) and argv[i] != "--":
        a = argv[i]
        if a == "--env" and i + 1 < len(argv):
            k, _, v = argv[i + 1].partition("=")
            env[k] = v
            i += 2
        elif a == "--csv" and i + 1 < len(argv):
            csv = argv[i + 1]
            i += 2
        elif a == "--tag" and i + 1 < len(argv):
            tag = argv[i + 1]
            i += 2
        elif a == "--quiet":
            quiet = True
            i += 1
        else:
            sys.exit(f"rusage: unknown argument '{a}'")
    cmd = argv[i + 1:]
    if not cmd:
        sys.exit("usage: rusage.py [--env K=V] [--csv FILE --tag TAG] [--quiet] -- CMD ...")
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            if quiet:
                fd = os.open(os.devnull, os.O_WRONLY)
                os.dup2(fd, 1)
            os.execvpe(cmd[0], cmd, env)
        except OSError as e:
            sys.stderr.write(f"rusage: cannot run {cmd[0]}: {e}\n")
            os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    mb = ru.ru_maxrss / 1024.0
    cpu = ru.ru_utime + ru.ru_stime
    sys.stderr.write(f"wall_s={wall:.3f} maxrss_mb={mb:.1f} rc={rc} cpu_s={cpu:.3f}\n")
    if csv:
        new = not os.path.exists(csv) or os.path.getsize(csv) == 0
        with open(csv, "a") as f:
            if new:
                f.write("tag,wall_s,maxrss_mb,rc,cpu_s\n")
            f.write(f"{tag or ''},{wall:.4f},{mb:.1f},{rc},{cpu:.4f}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
