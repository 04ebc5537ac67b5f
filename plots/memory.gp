# (d) KV-cache memory vs context length (plots/memory.gp), from each configuration's
# measured bytes per token (kv_bytes / tokens at the last evaluated position); fixed-budget
# configurations saturate at their budget.
# @STEM@.dat: block i-1 = configuration i, rows "context_tokens MiB".
array series[@N@] = [@TITLES@]
set title '@TITLE@' noenhanced
set xlabel 'context length (tokens)'
set ylabel 'KV-cache memory (MiB)'
set xrange [0:@XMAX@]
set yrange [0:*]
set key below left Left reverse maxrows 4
plot for [i=1:@N@] '@STEM@.dat' index (i-1) using 1:2 with lines linetype i title series[i]
