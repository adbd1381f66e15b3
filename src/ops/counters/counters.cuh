// The per-epoch counters of the device data path (a double array; integers are exact below
// 2^53), written by count_step (counters.cu) and read by adam_update_f32 (adam/adam.cu) and
// the host (src/ops/counters/cuda.rs, which mirrors these indices).
#pragma once

// The loss summed as loss * batch per step.
#define COUNTER_LOSS_SUM 0
// Correctly classified images.
#define COUNTER_CORRECT 1
// Images counted.
#define COUNTER_SEEN 2
// The first failed step + 1 (0: none).
#define COUNTER_FAILED_STEP 3
// What failed: 1 the loss is not finite, 2 the loss's inputs are not.
#define COUNTER_FAILURE 4
#define COUNTER_COUNT 5
