# kvreport compare (plots/compare.gp): one metric, one panel per run (multiplot), the
# configurations matched across runs on one shared x axis and one shared y range; mean over
# the run's sequences with its 95% t-interval. @STEM@.dat: one block per run (gnuplot index
# k-1 = run k), rows "x mean t_lo t_hi"; a configuration a run lacks has no row there.
# The panels are drawn twice: into the PNG (style.gp's terminal), then into the PDF.
@PANELS@
unset output
set terminal pdfcairo enhanced color size @PDF_SIZE@ font 'DejaVu Sans,8' linewidth 1
set output '@STEM@.pdf'
@PANELS@
unset output
