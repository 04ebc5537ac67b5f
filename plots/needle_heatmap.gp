# Needle heat map (plots/needle_heatmap.gp): context length x needle depth, one panel per
# configuration side by side in one plot (replot, which writes the PDF, replays one plot).
# @STEM@.dat: rows "x y value", x = panel * (contexts + 1) + context index, y = depth index.
set title 'Needle in a haystack' noenhanced
set xlabel 'context length (tokens), one panel per configuration'
set ylabel 'needle depth'
set cblabel '@CBLABEL@'
set xrange [-0.5:@XMAX@]
set yrange [-0.5:@YMAX@]
set xtics @XTICS@ rotate by 90 right font ',7'
set x2tics @XTOPTICS@ rotate by 30 left font ',7' noenhanced
set ytics @YTICS@
set cbrange [0:1]
unset grid
set tics scale 0
set border 15
set style fill solid 1.0 noborder
plot '@STEM@.dat' using 1:2:(0.5):(0.5):3 with boxxyerror fc palette notitle
