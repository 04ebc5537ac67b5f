# Needle retention against the keep fraction (plots/needle_retention.gp), one line per family.
# @STEM@.dat: one block per family, rows "keep_frac retained_frac".
set title 'Needle retention vs cache budget' noenhanced
set xlabel 'keep fraction (entries held / full cache)'
set ylabel 'needle value entries retained (fraction)'
set xrange [0:1.02]
set yrange [0:1.05]
set key bottom right font ',7'
@PLOT@
