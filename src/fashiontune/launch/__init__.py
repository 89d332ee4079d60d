"""Run the shard, training and evaluation jobs on SLURM (submitit) or submitit's local executor.

    cluster.py   ClusterConfig (configs/cluster/*.yaml), load_cluster
    env.py       rank discovery (SLURM / torchrun / submitit-local) -> RANK, WORLD_SIZE, MASTER_ADDR, ...
    registry.py  the jobs `fashiontune submit` knows: name -> function + config class
    runner.py    JobRunner: what runs on the nodes; checkpoint() = bounded requeue of the same run
    task.py      what every task process runs (submitit's process_job, preemption-safe at every moment)
    executor.py  ClusterConfig -> submitit executor, the sbatch script (--dry-run), job-state watcher
    submit.py    submit / wait (remote tracebacks), shard arrays + merge
    smoke.py     a tiny all-reduce job with checkpoints, for checking a cluster
    devcluster.py  start the one-node dev SLURM (slurm/dev-cluster/start.sh)
    testing.py   test support: job state from scontrol, a FIFO fault trace that holds a training job
    cli.py       `fashiontune submit {shards,train,eval,smoke} --cluster ... [--dry-run] [key=value ...]`
"""
