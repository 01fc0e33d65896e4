"""MNB-bi on MR (movie-review sentence polarity), 10-fold cross-validation: 79.0."""

from experiments.reproductions import KIM_2014, MNB_BI, WANG_MANNING_2012, Reproduction

ENTRY = Reproduction(paper=WANG_MANNING_2012, pool="mr:all", method=MNB_BI, published=79.0,
                     where=f"Table 2 (snippets), row MNB-bi, column RT-s; also {KIM_2014}, "
                           "Table 2, row MNB, column MR", config="configs/linear.py:mnb")
get_sweep = ENTRY.get_sweep
