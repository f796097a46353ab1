"""`trainer bench`: training throughput on one device, measured side by side in one process.

  options.py    the command's flags (BenchOptions, --size, --split-images)
  images.py     where the images come from: --data, or photo-like JPEGs it writes (--make-data)
  setup.py      what every case shares: config, device, image folder, the runner's settings
  cases.py      the four cases: (a) synthetic, (b) the runner, (c) plain torchvision, (d) blog
  report.py     the header, the table with its ratios, the --json settings
  whole_run.py  --whole-run: a whole multi-phase run, the runner against a blog-script loop
  run.py        bench(): which mode runs; the side-by-side table of (a)-(d)

Nothing here asserts a speed: it measures and prints.
"""
