# (b) Layer x head heat map (plots/heatmap.gp) of one metric for one configuration.
# @STEM@.dat: rows "head layer value", one block per layer.
set title '@TITLE@' noenhanced
set xlabel 'query head' offset 0,0.4
set ylabel 'layer' offset 1,0
set cblabel '@CBLABEL@' offset -0.5,0
set xrange [-0.5:@XMAX@]
set yrange [-0.5:@YMAX@]
set xtics @XTIC@
set ytics @YTIC@
set cbrange [@CBRANGE@]
set cbtics scale 0.5
unset grid
set tics scale 0
set border 15
set lmargin 5
set rmargin 11
plot '@STEM@.dat' using 1:2:3 with image notitle
