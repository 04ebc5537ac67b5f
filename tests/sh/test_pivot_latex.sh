#!/bin/sh
# kvreport's LaTeX tables compile in a standard article with no overfull box: the pivot
# (a float at \columnwidth up to 40 rows, a longtable above), the summary (a longtable of the
# default sweep's configurations (over a hundred) at \textwidth) and a ratio-column pivot. Skipped (exit
# 77) when pdflatex, booktabs or longtable is missing (Debian: texlive-latex-base and
# texlive-latex-recommended; not a build requirement).
set -u
K="$BIN/kvreport"
R="$BIN/kvreplay"
T="$KV_TMP"
TRACE="$KV_ROOT/traces/sample.h5"
[ -x "$K" ] && [ -x "$R" ] || { echo "FAIL: kvreport/kvreplay not built"; exit 1; }
if ! command -v pdflatex > /dev/null 2>&1; then
    echo "skipped: pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)"; exit 77
fi
for sty in booktabs longtable array; do
    if ! kpsewhich "$sty.sty" > /dev/null 2>&1; then
        echo "skipped: $sty.sty not found (texlive-latex-recommended / texlive-latex-base)"; exit 77
    fi
done
fails=0

# the default sweep on 2 sequences (over a hundred configurations: the summary is a longtable), and a
# sweep of 46 strategies x 2 budgets (the pivot is a longtable), and one of 40 (the most a float holds;
# the default sweep's pivot grows with the strategies, so it is no longer the float's case)
"$R" run "$TRACE" --sweep "$KV_ROOT/sweeps/default.sweep" --seqs 0,1 -o "$T/def" 2> "$T/run.err" || { cat "$T/run.err"; exit 1; }
sinks=$(seq -s, 0 44)
printf 'full\nstreaming keep=0.25,0.5 sinks=%s\nsnapkv keep=0.25,0.5 preset=factory\n' "$sinks" > "$T/long.sweep"
"$R" run "$TRACE" --sweep "$T/long.sweep" --seqs 0,1 -o "$T/long" 2> "$T/run.err" || { cat "$T/run.err"; exit 1; }
printf 'full\nstreaming keep=0.25,0.5 sinks=%s\nsnapkv keep=0.25,0.5 preset=factory\n' "$(seq -s, 0 38)" > "$T/short.sweep"
"$R" run "$TRACE" --sweep "$T/short.sweep" --seqs 0,1 -o "$T/short" 2> "$T/run.err" || { cat "$T/run.err"; exit 1; }
PATH=/nonexistent "$K" "$T/def" -o "$T/rep" --no-figures 2> "$T/rep.err" || { cat "$T/rep.err"; exit 1; }
"$K" table "$T/long" --pivot --format tex --label tab:long > "$T/long_pivot.tex" || exit 1
"$K" table "$T/short" --pivot --format tex --label tab:short > "$T/short_pivot.tex" || exit 1
"$K" table "$T/def" --pivot --format tex --columns ratio --metric out_cos > "$T/ratio_pivot.tex" || exit 1
"$K" table "$T/def" --pivot --format tex --metric nll_delta --cols 0.1,0.5 > "$T/nll_pivot.tex" || exit 1

grep -q 'begin{longtable}' "$T/long_pivot.tex" || { echo "FAIL: 46 rows are not a longtable"; fails=$((fails + 1)); }
grep -q 'begin{longtable}' "$T/rep/tables/summary.tex" || { echo "FAIL: the default sweep's summary is not a longtable"; fails=$((fails + 1)); }
grep -q 'begin{table}' "$T/short_pivot.tex" || { echo "FAIL: a pivot of 40 rows is not a float"; fails=$((fails + 1)); }

# compile NAME FILE...: one article with every FILE, pdflatex twice (longtable widths settle)
compile() {
    name=$1; shift
    mkdir -p "$T/$name"
    {
        printf '\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{longtable}\n\\usepackage{array}\n'
        printf '\\begin{document}\nText before the tables.\n\n'
        for f in "$@"; do printf '\\input{%s}\n\\clearpage\n' "$f"; done
        printf '\\end{document}\n'
    } > "$T/$name/doc.tex"
    for pass in 1 2; do
        (cd "$T/$name" && pdflatex -interaction=nonstopmode -halt-on-error doc.tex > pdflatex.out 2>&1)
        rc=$?
        if [ $rc -ne 0 ]; then
            echo "FAIL $name: pdflatex exited $rc"; grep -A3 '^!' "$T/$name/doc.log" | head -n 12; fails=$((fails + 1)); return
        fi
    done
    if grep -q 'Overfull' "$T/$name/doc.log"; then
        echo "FAIL $name: overfull box:"; grep -A2 'Overfull' "$T/$name/doc.log" | head -n 12; fails=$((fails + 1)); return
    fi
    if grep -q 'LaTeX Warning: Label .* multiply defined' "$T/$name/doc.log"; then
        echo "FAIL $name: a label defined twice"; fails=$((fails + 1)); return
    fi
    echo "ok   $name: compiles, no overfull box ($*)"
}
compile pivot "$T/rep/tables/pivot.tex"
compile summary "$T/rep/tables/summary.tex"
compile long "$T/long_pivot.tex"
compile short "$T/short_pivot.tex"
compile all "$T/rep/tables/pivot.tex" "$T/rep/tables/summary.tex" "$T/ratio_pivot.tex" "$T/nll_pivot.tex"
[ $fails -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "all LaTeX tables compile without overfull boxes"
