// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title Settlement
/// @notice On-chain custody and batch settlement for the exchange.
///
/// Accounts are plain addresses (the off-chain batcher maps exchange account ids to addresses).
/// Assets are ERC-20 token addresses. Markets are `bytes32` ids:
/// `market = keccak256(bytes(symbol))`, e.g. `keccak256("BTC-USD")`, with the exact symbol
/// string of the off-chain market. The contract keeps no market registry: any id works, each
/// market has its own trade-sequence counter (starting at 0, so the first batch of a market
/// must have `firstTradeSeq == 1`) and its own batch-hash chain (starting at `bytes32(0)`).
///
/// Settlement: the operator submits one batch per contiguous trade-sequence range of a market.
/// The batch commits a Merkle root of the batch's trade records (computed off-chain; the
/// contract only stores it in the hash chain and the event) and applies net balance deltas,
/// one per (account, token) as produced by the batcher. Deltas are applied in calldata order;
/// for every token they must sum to exactly zero and no balance may go negative at any point.
/// Trading fees are ordinary positive deltas to `feeAccount`: the contract gives them no special
/// treatment.
///
/// Batch hash (compute the same off-chain, e.g. with eth_abi):
///     deltasHash = keccak256(abi.encode(deltas))
///                  -- abi encoding of one value of type (address,address,int256)[]
///     batchHash  = keccak256(abi.encode(prevBatchHash, market, firstTradeSeq, lastTradeSeq,
///                                       merkleRoot, deltasHash))
///                  -- types (bytes32,bytes32,uint64,uint64,bytes32,bytes32), each padded to 32 bytes
///
/// Withdrawals take two steps: `requestWithdrawal` moves funds from the available balance into
/// a reservation and records the current settlement epoch; `claimWithdrawal` pays out only after
/// at least one later settlement (a batch of any market, or an operator heartbeat) has been
/// applied, so a withdrawal cannot race trades that were matched before it was requested.
/// The off-chain side must treat a `WithdrawalRequested` event as a debit of the user's
/// tradable balance: a batch that spends reserved funds reverts with `InsufficientBalance`.
///
/// Escape hatch: when neither a batch nor a heartbeat has been applied for `escapePeriod`
/// seconds, escape mode is open for good: any account can `escapeWithdraw(token)` its whole
/// balance of that token (available plus reserved) without the operator. From that moment on
/// settlement, heartbeats, deposits, withdrawal requests and claims revert with
/// `EscapeModeActive`, and the escape period can no longer be changed, so escape mode is
/// permanent. `escapeWithdraw` ignores the pause flag: pausing for longer than `escapePeriod`
/// therefore opens escape mode.
///
/// Pause (admin): while paused, deposit, requestWithdrawal, claimWithdrawal, settleBatch and
/// heartbeat revert with `EnforcedPause`; only escapeWithdraw (once open) moves funds. Admin
/// configuration (fee account, escape period, roles, unpause) stays available.
///
/// Tokens: standard ERC-20s. Deposits credit the amount actually received (fee-on-transfer
/// tokens are credited net). Rebasing tokens are not supported.
contract Settlement is AccessControl, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice One net balance change of a batch.
    struct Delta {
        address account;
        address token;
        int256 amount;
    }

    /// @notice A pending two-step withdrawal. `amount == 0` means unknown or already claimed.
    struct Withdrawal {
        address account;
        uint64 epoch;
        address token;
        uint256 amount;
    }

    /// @notice Role allowed to settle batches and send heartbeats.
    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    /// @notice Bounds of `escapePeriod`; the upper bound keeps the admin from disabling the hatch.
    uint64 public constant MIN_ESCAPE_PERIOD = 10 minutes;
    uint64 public constant MAX_ESCAPE_PERIOD = 30 days;

    /// @notice Available (tradable, withdrawable) balance of an account in a token.
    mapping(address account => mapping(address token => uint256)) public balanceOf;
    /// @notice Sum of the account's unclaimed withdrawal requests in a token.
    mapping(address account => mapping(address token => uint256)) public reservedOf;
    /// @notice Last trade sequence number settled for a market (0 = none yet).
    mapping(bytes32 market => uint64) public lastSettledSeq;
    /// @notice Hash of the last batch settled for a market (0 = none yet).
    mapping(bytes32 market => bytes32) public lastBatchHash;
    /// @notice Withdrawal requests by id (ids start at 1).
    mapping(uint256 id => Withdrawal) public withdrawals;
    /// @notice Number of withdrawal requests ever made (= id of the latest).
    uint256 public withdrawalCount;
    /// @notice Account that the batcher credits trading fees to (informational for the contract).
    address public feeAccount;

    // One storage slot, read by every state-changing user function and written once per batch.
    /// @notice Number of batches plus heartbeats applied so far (any market).
    uint64 public settlementEpoch;
    /// @notice Timestamp of the last batch or heartbeat (deployment time before the first).
    uint64 public lastSettlementAt;
    /// @notice Seconds without a batch or heartbeat after which escape mode opens.
    uint64 public escapePeriod;

    event Deposited(address indexed account, address indexed token, uint256 amount);
    event WithdrawalRequested(
        uint256 indexed id, address indexed account, address indexed token, uint256 amount, uint64 epoch
    );
    event WithdrawalClaimed(uint256 indexed id, address indexed account, address indexed token, uint256 amount);
    event BatchSettled(
        bytes32 indexed market,
        uint64 firstTradeSeq,
        uint64 lastTradeSeq,
        bytes32 merkleRoot,
        bytes32 indexed batchHash,
        bytes32 prevBatchHash
    );
    event Heartbeat(uint64 epoch);
    event EscapeWithdrawn(address indexed account, address indexed token, uint256 amount);
    event FeeAccountSet(address indexed previous, address indexed current);
    event EscapePeriodSet(uint64 previous, uint64 current);

    error ZeroAddress();
    error ZeroAmount();
    error InvalidEscapePeriod(uint64 period);
    error InsufficientBalance(address account, address token);
    error DeltasDoNotNet(address token);
    error InvalidDelta(uint256 index);
    error BatchAlreadySettled(bytes32 market, uint64 firstTradeSeq, uint64 lastSettledSeq);
    error SequenceGap(bytes32 market, uint64 expectedFirstTradeSeq, uint64 firstTradeSeq);
    error InvalidSeqRange(uint64 firstTradeSeq, uint64 lastTradeSeq);
    error PrevHashMismatch(bytes32 market, bytes32 expected, bytes32 provided);
    error UnknownWithdrawal(uint256 id);
    error NotWithdrawalOwner(uint256 id, address caller);
    error WithdrawalNotReady(uint256 id, uint64 requestEpoch, uint64 currentEpoch);
    error EscapeModeActive();
    error EscapeNotAvailable(uint256 opensAt);
    error NothingToWithdraw(address account, address token);

    modifier whenNotEscaped() {
        if (escapeOpen()) revert EscapeModeActive();
        _;
    }

    constructor(address admin, address operator, address feeAccount_, uint64 escapePeriod_) {
        if (admin == address(0) || operator == address(0) || feeAccount_ == address(0)) revert ZeroAddress();
        _checkEscapePeriod(escapePeriod_);
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(OPERATOR_ROLE, operator);
        feeAccount = feeAccount_;
        escapePeriod = escapePeriod_;
        lastSettlementAt = uint64(block.timestamp);
        emit FeeAccountSet(address(0), feeAccount_);
        emit EscapePeriodSet(0, escapePeriod_);
    }

    // ---------------------------------------------------------------- user funds

    /// @notice Pull `amount` of `token` from the caller (needs an ERC-20 allowance) and credit
    /// the amount actually received to the caller's available balance.
    function deposit(address token, uint256 amount) external nonReentrant whenNotPaused whenNotEscaped {
        if (amount == 0) revert ZeroAmount();
        IERC20 t = IERC20(token);
        uint256 before = t.balanceOf(address(this));
        t.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = t.balanceOf(address(this)) - before;
        // A token that delivered nothing (e.g. a 100% transfer fee) credits nothing (see SLITHER.md).
        // slither-disable-next-line incorrect-equality
        if (received == 0) revert ZeroAmount();
        balanceOf[msg.sender][token] += received;
        emit Deposited(msg.sender, token, received);
    }

    /// @notice Step 1 of a withdrawal: reserve `amount` from the available balance.
    /// @return id The request id to pass to `claimWithdrawal`.
    function requestWithdrawal(address token, uint256 amount)
        external
        whenNotPaused
        whenNotEscaped
        returns (uint256 id)
    {
        if (amount == 0) revert ZeroAmount();
        uint256 bal = balanceOf[msg.sender][token];
        if (bal < amount) revert InsufficientBalance(msg.sender, token);
        unchecked {
            balanceOf[msg.sender][token] = bal - amount;
        }
        reservedOf[msg.sender][token] += amount;
        uint64 epoch = settlementEpoch;
        id = ++withdrawalCount;
        withdrawals[id] = Withdrawal({account: msg.sender, epoch: epoch, token: token, amount: amount});
        emit WithdrawalRequested(id, msg.sender, token, amount, epoch);
    }

    /// @notice Step 2 of a withdrawal: pay out request `id` to its account. Only the requesting
    /// account may claim, and only once a batch or heartbeat has been applied after the request.
    function claimWithdrawal(uint256 id) external nonReentrant whenNotPaused whenNotEscaped {
        Withdrawal memory w = withdrawals[id];
        if (w.amount == 0) revert UnknownWithdrawal(id);
        if (w.account != msg.sender) revert NotWithdrawalOwner(id, msg.sender);
        uint64 current = settlementEpoch;
        if (current <= w.epoch) revert WithdrawalNotReady(id, w.epoch, current);
        delete withdrawals[id];
        reservedOf[w.account][w.token] -= w.amount;
        emit WithdrawalClaimed(id, w.account, w.token, w.amount);
        IERC20(w.token).safeTransfer(w.account, w.amount);
    }

    /// @notice Escape hatch: once escape mode is open, pay the caller its whole balance of
    /// `token` (available plus reserved). Works while paused and needs no operator.
    /// @return amount The amount transferred.
    function escapeWithdraw(address token) external nonReentrant returns (uint256 amount) {
        if (!escapeOpen()) revert EscapeNotAvailable(escapeOpensAt());
        amount = balanceOf[msg.sender][token] + reservedOf[msg.sender][token];
        if (amount == 0) revert NothingToWithdraw(msg.sender, token);
        balanceOf[msg.sender][token] = 0;
        reservedOf[msg.sender][token] = 0;
        emit EscapeWithdrawn(msg.sender, token, amount);
        IERC20(token).safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- operator

    /// @notice Settle trades `firstTradeSeq..lastTradeSeq` of `market`.
    /// @return batchHash The new head of the market's batch-hash chain (formula in the header).
    function settleBatch(
        bytes32 market,
        uint64 firstTradeSeq,
        uint64 lastTradeSeq,
        bytes32 prevBatchHash,
        bytes32 merkleRoot,
        Delta[] calldata deltas
    ) external onlyRole(OPERATOR_ROLE) whenNotPaused whenNotEscaped returns (bytes32 batchHash) {
        uint64 last = lastSettledSeq[market];
        if (firstTradeSeq <= last) revert BatchAlreadySettled(market, firstTradeSeq, last);
        // firstTradeSeq > last here, so last + 1 cannot overflow.
        if (firstTradeSeq != last + 1) revert SequenceGap(market, last + 1, firstTradeSeq);
        if (lastTradeSeq < firstTradeSeq) revert InvalidSeqRange(firstTradeSeq, lastTradeSeq);
        bytes32 expectedPrev = lastBatchHash[market];
        if (prevBatchHash != expectedPrev) revert PrevHashMismatch(market, expectedPrev, prevBatchHash);

        batchHash = keccak256(
            abi.encode(
                prevBatchHash, market, firstTradeSeq, lastTradeSeq, merkleRoot, keccak256(abi.encode(deltas))
            )
        );
        lastSettledSeq[market] = lastTradeSeq;
        lastBatchHash[market] = batchHash;
        _advanceEpoch();

        _applyDeltas(deltas);

        emit BatchSettled(market, firstTradeSeq, lastTradeSeq, merkleRoot, batchHash, prevBatchHash);
    }

    /// @notice Liveness signal for idle periods: advances the settlement epoch (so pending
    /// withdrawals become claimable) and restarts the escape clock, without settling trades.
    /// The operator must only send it when every trade matched so far has been settled.
    function heartbeat() external onlyRole(OPERATOR_ROLE) whenNotPaused whenNotEscaped {
        uint64 epoch = _advanceEpoch();
        emit Heartbeat(epoch);
    }

    // ---------------------------------------------------------------- admin

    function setFeeAccount(address newFeeAccount) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (newFeeAccount == address(0)) revert ZeroAddress();
        emit FeeAccountSet(feeAccount, newFeeAccount);
        feeAccount = newFeeAccount;
    }

    /// @notice Change the escape period (bounded); impossible once escape mode is open, and the
    /// new period may not open it at once (escape mode is permanent, so that would be a shutdown).
    function setEscapePeriod(uint64 newPeriod) external onlyRole(DEFAULT_ADMIN_ROLE) whenNotEscaped {
        _checkEscapePeriod(newPeriod);
        // slither-disable-next-line timestamp
        if (uint256(lastSettlementAt) + newPeriod <= block.timestamp) revert InvalidEscapePeriod(newPeriod);
        emit EscapePeriodSet(escapePeriod, newPeriod);
        escapePeriod = newPeriod;
    }

    function pause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }

    // ---------------------------------------------------------------- views

    /// @notice Time at which escape mode opens unless a batch or heartbeat comes first.
    function escapeOpensAt() public view returns (uint256) {
        return uint256(lastSettlementAt) + uint256(escapePeriod);
    }

    /// @notice True once no batch or heartbeat has been applied for `escapePeriod` seconds.
    function escapeOpen() public view returns (bool) {
        // The only timing decision in the contract: a block producer's few seconds of skew are
        // irrelevant next to escape periods of at least MIN_ESCAPE_PERIOD (see SLITHER.md).
        // slither-disable-next-line timestamp
        return block.timestamp >= escapeOpensAt(); // forge-lint: disable-line(block-timestamp)
    }

    // ---------------------------------------------------------------- internals

    function _advanceEpoch() private returns (uint64 epoch) {
        epoch = settlementEpoch + 1;
        settlementEpoch = epoch;
        lastSettlementAt = uint64(block.timestamp);
    }

    function _checkEscapePeriod(uint64 period) private pure {
        if (period < MIN_ESCAPE_PERIOD || period > MAX_ESCAPE_PERIOD) revert InvalidEscapePeriod(period);
    }

    /// Applies the deltas in order and checks that they net to zero per token. The per-token
    /// sums live in memory with a linear search: a market batch touches very few tokens.
    function _applyDeltas(Delta[] calldata deltas) private {
        uint256 n = deltas.length;
        address[] memory tokens = new address[](n);
        int256[] memory sums = new int256[](n);
        uint256 tokenCount = 0;
        for (uint256 i; i < n; ++i) {
            address account = deltas[i].account;
            address token = deltas[i].token;
            int256 amount = deltas[i].amount;
            if (account == address(0) || token == address(0) || amount == type(int256).min) {
                revert InvalidDelta(i);
            }

            uint256 j;
            while (j < tokenCount && tokens[j] != token) {
                unchecked {
                    ++j;
                }
            }
            if (j == tokenCount) {
                tokens[j] = token;
                unchecked {
                    ++tokenCount;
                }
            }
            sums[j] += amount;

            mapping(address => uint256) storage balances = balanceOf[account];
            if (amount >= 0) {
                // casting to 'uint256' is safe because amount >= 0
                // forge-lint: disable-next-line(unsafe-typecast)
                balances[token] += uint256(amount);
            } else {
                // casting to 'uint256' is safe because amount < 0 and amount != type(int256).min
                // forge-lint: disable-next-line(unsafe-typecast)
                uint256 debit = uint256(-amount);
                uint256 bal = balances[token];
                if (bal < debit) revert InsufficientBalance(account, token);
                unchecked {
                    balances[token] = bal - debit;
                }
            }
        }
        for (uint256 j; j < tokenCount; ++j) {
            if (sums[j] != 0) revert DeltasDoNotNet(tokens[j]);
        }
    }
}
