# (b) Layer x head heat map (plots/heatmap.gp) of one metric for one configuration.
# @STEM@.dat: rows "head layer value", one block per layer.
set title '@TITLE@' noenhanced
set xlabel 'query head'
set ylabel 'layer'
set cblabel '@CBLABEL@'
set xrange [-0.5:@XMAX@]
set yrange [-0.5:@YMAX@]
set xtics @XTIC@
set ytics @YTIC@
set cbrange [@CBRANGE@]
unset grid
set tics scale 0
set border 15
plot '@STEM@.dat' using 1:2:3 with image notitle
