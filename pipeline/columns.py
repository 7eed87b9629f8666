"""Column names of the row contract. Every module takes its column names from here."""

# problem
PROBLEM_ID = "problem_id"
PROBLEM = "problem"
ANSWER = "answer"
SOURCE = "source"
LEVEL = "level"
SPLIT = "split"
METADATA = "metadata"
PROBLEM_COLUMNS = (PROBLEM_ID, PROBLEM, ANSWER, SOURCE, LEVEL, SPLIT, METADATA)

# sample
SAMPLE_IDX = "sample_idx"
COMPLETION = "completion"
FINISH_REASON = "finish_reason"
NUM_PROMPT_TOKENS = "num_prompt_tokens"
NUM_COMPLETION_TOKENS = "num_completion_tokens"
MODEL_ID = "model_id"
SAMPLING_FINGERPRINT = "sampling_fingerprint"
SEED = "seed"
ERROR = "error"
SAMPLE_COLUMNS = (
    SAMPLE_IDX, COMPLETION, FINISH_REASON, NUM_PROMPT_TOKENS, NUM_COMPLETION_TOKENS,
    MODEL_ID, SAMPLING_FINGERPRINT, SEED, ERROR,
)

# verify
CORRECT = "correct"
EXTRACTED = "extracted"
VERDICT_REASON = "verdict_reason"
VERIFIER = "verifier"
VERIFY_MS = "verify_ms"
MEMBER_VERDICTS = "member_verdicts"
VERIFY_COLUMNS = (CORRECT, EXTRACTED, VERDICT_REASON, VERIFIER, VERIFY_MS, MEMBER_VERDICTS)

# difficulty (per problem, also broadcast onto its sample rows)
PASS_RATE = "pass_rate"
N_SAMPLES = "n_samples"
N_CORRECT = "n_correct"
CI_LOW = "ci_low"
CI_HIGH = "ci_high"
DIFFICULTY_MODEL = "difficulty_model"
TIER = "tier"
DIFFICULTY_COLUMNS = (PASS_RATE, N_SAMPLES, N_CORRECT, CI_LOW, CI_HIGH, DIFFICULTY_MODEL, TIER)

# curate
KEPT = "kept"
RULE = "rule"
KEEP_REASON = "keep_reason"
DROP_REASON = "drop_reason"
CURATE_COLUMNS = (KEPT, RULE, KEEP_REASON, DROP_REASON)

# quarantine
REJECT_REASON = "reject_reason"

# screen (a cheaper model's attempts per problem, before the generator samples; LIMO's first difficulty tier)
SCREEN_MODEL = "screen_model"
SCREEN_N_SAMPLES = "screen_n_samples"
SCREEN_N_CORRECT = "screen_n_correct"
SCREEN_PASS_RATE = "screen_pass_rate"
SCREEN_COLUMNS = (SCREEN_MODEL, SCREEN_N_SAMPLES, SCREEN_N_CORRECT, SCREEN_PASS_RATE)

# curate: what the rule saw and the experiment knobs (oracle noise eta, generator noise eps), per row
CURATION_SCORE = "curation_score"
ORACLE_NOISE = "oracle_noise"
GENERATOR_NOISE = "generator_noise"
QUALITY_SCORE = "quality_score"
CURATE_DETAIL_COLUMNS = (CURATION_SCORE, ORACLE_NOISE, GENERATOR_NOISE, QUALITY_SCORE)


def arrow_types():
    """Arrow types of the contract's columns, so every part file of a stage has one schema."""
    import pyarrow as pa

    s, i, f, b = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    return {
        PROBLEM_ID: s, PROBLEM: s, ANSWER: s, SOURCE: s, LEVEL: i, SPLIT: s, METADATA: s,
        SAMPLE_IDX: i, COMPLETION: s, FINISH_REASON: s, NUM_PROMPT_TOKENS: i, NUM_COMPLETION_TOKENS: i,
        MODEL_ID: s, SAMPLING_FINGERPRINT: s, SEED: i, ERROR: s,
        CORRECT: b, EXTRACTED: s, VERDICT_REASON: s, VERIFIER: s, VERIFY_MS: f, MEMBER_VERDICTS: s,
        PASS_RATE: f, N_SAMPLES: i, N_CORRECT: i, CI_LOW: f, CI_HIGH: f, DIFFICULTY_MODEL: s, TIER: s,
        KEPT: b, RULE: s, KEEP_REASON: s, DROP_REASON: s, REJECT_REASON: s,
        SCREEN_MODEL: s, SCREEN_N_SAMPLES: i, SCREEN_N_CORRECT: i, SCREEN_PASS_RATE: f,
        CURATION_SCORE: f, ORACLE_NOISE: b, GENERATOR_NOISE: s, QUALITY_SCORE: f,
    }
