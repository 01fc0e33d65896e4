"""NBSVM-bi on MR (movie-review sentence polarity), 10-fold cross-validation: 79.4."""

from experiments.reproductions import KIM_2014, NBSVM_BI, WANG_MANNING_2012, Reproduction

ENTRY = Reproduction(WANG_MANNING_2012, published=79.4, config="configs/linear.py:nbsvm",
                     where=f"Table 2 (snippets), row NBSVM-bi, column RT-s; also {KIM_2014}, "
                           "Table 2, row NBSVM, column MR",
                     method=NBSVM_BI, pool="mr:all")
get_sweep = ENTRY.get_sweep
