"""HybridFlow (Sheng et al. 2024, "HybridFlow: A Flexible and Efficient RLHF Framework", arXiv:2409.19256):
lmlab's online RL (PPO / RLOO / GRPO of lmlab.align.ppo) as a dataflow over worker groups driven by a single
controller, on Ray. Its authors' code is verl (github.com/volcengine/verl); what was followed is named in each
module.

    workers     Batch, dispatch modes (split / broadcast / rank zero), worker groups, placements, RoleWorker
    controller  HybridFlow: pools on Ray (or in-process), the controller loop, weight sync, checkpoints and
                restarts; dataflow_rl_train = rl_train's signature run as a dataflow
    sampling    row-seeded rollouts (the same samples whatever the number of rollout workers)
    plan        placement search from profiled stage costs, and an analytic model for GPU clusters
    stage       `lmlab align rl CONFIG --ray`: the rl stage with the dataflow in place of rl_train

Nothing here imports Ray at module level (the registries walk lmlab.align); Ray is needed only to run.
"""
