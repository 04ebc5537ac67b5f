# Needle heat map (plots/needle_heatmap.gp): context length x needle depth, one panel per
# configuration on a grid in one plot (replot, which writes the PDF, replays one plot).
# @STEM@.dat: rows "x y value" (its first line says where each panel lies); the panels'
# names are labels above them.
set title 'Needle in a haystack' noenhanced
set xlabel 'context length (tokens)'
set ylabel 'needle depth'
set cblabel '@CBLABEL@'
set xrange [-0.5:@XMAX@]
set yrange [-0.5:@YMAX@]
set xtics @XTICS@ rotate by 90 right font ',7'
@LABELS@
set ytics @YTICS@
set cbrange [0:1]
unset grid
set tics scale 0
set border 15
set style fill solid 1.0 noborder
plot '@STEM@.dat' using 1:2:(0.5):(0.5):3 with boxxyerror fc palette notitle
