// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test, FuzzSelector} from "./utils/Test.sol";
import {MockERC20} from "./mocks/MockERC20.sol";
import {Settlement} from "../src/Settlement.sol";

/// Drives the Settlement contract with random sequences of user, operator, admin and attacker
/// actions, keeps an independent model ("ghost" state) and records every property violation it
/// observes. Handler functions never revert, so every call of a campaign does something.
contract SettlementHandler is Test {
    Settlement public s;
    MockERC20[2] public tokens;
    bytes32[2] public markets;
    address[5] public actors; // actors[4] is the fee account
    address public admin;
    address public operator;

    // Model of the chain heads per market, and of operator activity.
    mapping(bytes32 => uint64) public ghostSeq;
    mapping(bytes32 => bytes32) public ghostHash;
    mapping(bytes32 => bytes) internal lastSettleCall;
    uint256 public ghostBatches;
    uint256 public ghostHeartbeats;
    uint256[] internal openRequests;

    // Violations (each must stay false).
    bool public unauthorizedSettle;
    bool public replayAccepted;
    bool public badBatchAccepted;
    bool public seqNotAdvancedByLength;
    bool public hashMismatch;
    bool public pausedStateChanged;
    bool public escapeFailed;
    bool public escapeEarly;
    bool public escapeWrongAmount;
    bool public earlyClaim;
    bool public actedDuringEscape;

    // Coverage counters (printed nowhere, useful when debugging with -vvv).
    uint256 public nSettled;
    uint256 public nEscapes;
    uint256 public nClaims;
    uint256 public nEscapesAfterRequests;

    constructor(Settlement s_, MockERC20[2] memory tokens_, address admin_, address operator_, address fee_) {
        s = s_;
        tokens = tokens_;
        admin = admin_;
        operator = operator_;
        markets = [keccak256("BTC-USD"), keccak256("ETH-USD")];
        actors = [address(0x1001), address(0x1002), address(0x1003), address(0x1004), fee_];
    }

    // ------------------------------------------------------------------ helpers

    function actorCount() external pure returns (uint256) {
        return 5;
    }

    /// Digest of all contract state that users and the operator can change.
    function digest() public view returns (bytes32 h) {
        h = keccak256(abi.encode(s.settlementEpoch(), s.lastSettlementAt(), s.withdrawalCount()));
        for (uint256 m; m < 2; ++m) {
            h = keccak256(abi.encode(h, s.lastSettledSeq(markets[m]), s.lastBatchHash(markets[m])));
        }
        for (uint256 t; t < 2; ++t) {
            address token = address(tokens[t]);
            h = keccak256(abi.encode(h, tokens[t].balanceOf(address(s))));
            for (uint256 a; a < 5; ++a) {
                h = keccak256(abi.encode(h, s.balanceOf(actors[a], token), s.reservedOf(actors[a], token)));
            }
        }
    }

    /// The first (actor, token) from the seeds on that holds an available balance (or, with
    /// includeReserved, any claim at all); the seeded pair itself when none does.
    function _pickHolder(uint256 actorSeed, uint256 tokenSeed, bool includeReserved)
        internal
        view
        returns (address actor, address token)
    {
        for (uint256 i; i < 10; ++i) {
            actor = actors[(actorSeed + i / 2) % 5];
            token = address(tokens[(tokenSeed + i) % 2]);
            uint256 held = s.balanceOf(actor, token);
            if (includeReserved) held += s.reservedOf(actor, token);
            if (held > 0) return (actor, token);
        }
        return (actors[actorSeed % 5], address(tokens[tokenSeed % 2]));
    }

    modifier checkPausedOrEscaped() {
        bool frozen = s.paused() || s.escapeOpen();
        bytes32 before = frozen ? digest() : bytes32(0);
        _;
        if (frozen && digest() != before) {
            if (s.paused()) pausedStateChanged = true;
            else actedDuringEscape = true;
        }
    }

    // ------------------------------------------------------------------ user actions

    function deposit(uint256 actorSeed, uint256 tokenSeed, uint256 amount) external checkPausedOrEscaped {
        address actor = actors[actorSeed % 5];
        MockERC20 token = tokens[tokenSeed % 2];
        amount = bound(amount, 1, 1e30);
        token.mint(actor, amount);
        vm.startPrank(actor);
        token.approve(address(s), amount);
        try s.deposit(address(token), amount) {} catch {}
        vm.stopPrank();
    }

    function requestWithdrawal(uint256 actorSeed, uint256 tokenSeed, uint256 amount) external checkPausedOrEscaped {
        (address actor, address token) = _pickHolder(actorSeed, tokenSeed, false);
        uint256 available = s.balanceOf(actor, token);
        amount = bound(amount, 1, available + 1); // sometimes one more than available
        vm.prank(actor);
        try s.requestWithdrawal(token, amount) returns (uint256 id) {
            openRequests.push(id);
        } catch {}
    }

    function claimWithdrawal(uint256 idSeed) external checkPausedOrEscaped {
        if (openRequests.length == 0) return;
        uint256 k = idSeed % openRequests.length;
        uint256 id = openRequests[k];
        (address account, uint64 epoch,,) = s.withdrawals(id);
        uint64 current = s.settlementEpoch();
        vm.prank(account);
        try s.claimWithdrawal(id) {
            if (current <= epoch) earlyClaim = true;
            openRequests[k] = openRequests[openRequests.length - 1];
            openRequests.pop();
            ++nClaims;
        } catch {}
    }

    function escapeWithdraw(uint256 actorSeed, uint256 tokenSeed) external {
        (address actor, address tokenAddress) = _pickHolder(actorSeed, tokenSeed, true);
        MockERC20 token = MockERC20(tokenAddress);
        bool open = s.escapeOpen();
        uint256 owed = s.balanceOf(actor, address(token)) + s.reservedOf(actor, address(token));
        uint256 walletBefore = token.balanceOf(actor);
        vm.prank(actor);
        try s.escapeWithdraw(address(token)) returns (uint256 paid) {
            if (!open) escapeEarly = true;
            if (paid != owed || token.balanceOf(actor) != walletBefore + owed) escapeWrongAmount = true;
            ++nEscapes;
            if (s.withdrawalCount() > 0) ++nEscapesAfterRequests;
        } catch {
            if (open && owed > 0) escapeFailed = true;
        }
    }

    // ------------------------------------------------------------------ operator actions

    /// Random transfers between actors, netted into one delta per (actor, token).
    function _randomDeltas(uint256 seed) internal view returns (Settlement.Delta[] memory d) {
        int256[5][2] memory net;
        uint256[5][2] memory spent;
        uint256 transfers = seed % 6;
        for (uint256 i; i < transfers; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            uint256 t = r % 2;
            uint256 from = (r >> 8) % 5;
            uint256 to = (r >> 16) % 5;
            uint256 room = s.balanceOf(actors[from], address(tokens[t])) - spent[t][from];
            uint256 amount = room == 0 ? 0 : (r >> 24) % (room + 1);
            spent[t][from] += amount;
            net[t][from] -= int256(amount);
            net[t][to] += int256(amount);
        }
        uint256 count;
        for (uint256 t; t < 2; ++t) {
            for (uint256 a; a < 5; ++a) {
                if (net[t][a] != 0) ++count;
            }
        }
        d = new Settlement.Delta[](count);
        uint256 k;
        for (uint256 t; t < 2; ++t) {
            for (uint256 a; a < 5; ++a) {
                if (net[t][a] != 0) d[k++] = Settlement.Delta(actors[a], address(tokens[t]), net[t][a]);
            }
        }
    }

    function settleBatch(uint256 marketSeed, uint256 lengthSeed, uint256 seed) external checkPausedOrEscaped {
        bytes32 market = markets[marketSeed % 2];
        uint64 first = ghostSeq[market] + 1;
        uint64 last = first + uint64(bound(lengthSeed, 1, 2000)) - 1;
        bytes32 prev = ghostHash[market];
        bytes32 root = keccak256(abi.encode("root", seed));
        Settlement.Delta[] memory d = _randomDeltas(seed);
        bytes memory call = abi.encodeCall(Settlement.settleBatch, (market, first, last, prev, root, d));
        vm.prank(operator);
        (bool ok, bytes memory ret) = address(s).call(call);
        if (!ok) return; // paused or escape mode (the modifier checks that nothing changed)
        bytes32 expected = keccak256(abi.encode(prev, market, first, last, root, keccak256(abi.encode(d))));
        if (abi.decode(ret, (bytes32)) != expected || s.lastBatchHash(market) != expected) hashMismatch = true;
        if (s.lastSettledSeq(market) != ghostSeq[market] + (last - first + 1)) seqNotAdvancedByLength = true;
        ghostSeq[market] = last;
        ghostHash[market] = expected;
        lastSettleCall[market] = call;
        ++ghostBatches;
        ++nSettled;
    }

    /// A batch that does not net to zero, or overdraws an account, must never be accepted.
    function settleInvalidBatch(uint256 marketSeed, uint256 actorSeed, bool overdraw) external {
        bytes32 market = markets[marketSeed % 2];
        uint64 first = ghostSeq[market] + 1;
        address victim = actors[actorSeed % 5];
        address token = address(tokens[0]);
        Settlement.Delta[] memory d = new Settlement.Delta[](2);
        if (overdraw) {
            int256 amount = int256(s.balanceOf(victim, token)) + 1;
            d[0] = Settlement.Delta(victim, token, -amount);
            d[1] = Settlement.Delta(actors[(actorSeed + 1) % 5], token, amount);
        } else {
            d[0] = Settlement.Delta(victim, token, 1);
            d[1] = Settlement.Delta(actors[(actorSeed + 1) % 5], address(tokens[1]), 0);
        }
        vm.prank(operator);
        try s.settleBatch(market, first, first, ghostHash[market], bytes32(0), d) {
            badBatchAccepted = true;
        } catch {}
    }

    /// Resubmit the exact last settlement transaction of a market: must revert.
    function replayLastBatch(uint256 marketSeed) external {
        bytes memory call = lastSettleCall[markets[marketSeed % 2]];
        if (call.length == 0) return;
        vm.prank(operator);
        (bool ok,) = address(s).call(call);
        if (ok) replayAccepted = true;
    }

    /// A non-operator (any actor, or the admin) tries to settle a well-formed next batch.
    function settleAsStranger(uint256 actorSeed, uint256 marketSeed) external {
        address stranger = actorSeed % 6 == 5 ? admin : actors[actorSeed % 5];
        bytes32 market = markets[marketSeed % 2];
        uint64 first = ghostSeq[market] + 1;
        vm.prank(stranger);
        try s.settleBatch(market, first, first, ghostHash[market], bytes32(0), new Settlement.Delta[](0)) {
            unauthorizedSettle = true;
        } catch {}
    }

    function heartbeat() external checkPausedOrEscaped {
        vm.prank(operator);
        try s.heartbeat() {
            ++ghostHeartbeats;
        } catch {}
    }

    // ------------------------------------------------------------------ admin and time

    function togglePause() external {
        bool paused = s.paused();
        vm.prank(admin);
        if (paused) s.unpause();
        else s.pause();
    }

    function warp(uint256 secondsSeed) external {
        vm.warp(block.timestamp + bound(secondsSeed, 0, 12 hours));
    }

    /// Jumps past the escape period in a quarter of its calls, so that about half of the runs
    /// reach escape mode and the other half keep exercising settlement.
    function warpPastEscapePeriod(uint256 secondsSeed) external {
        if (secondsSeed % 4 != 0) return;
        vm.warp(block.timestamp + s.escapePeriod() + bound(secondsSeed, 0, 1 days));
    }

    // ------------------------------------------------------------------ views for invariants

    function openRequestCount() external view returns (uint256) {
        return openRequests.length;
    }

    function openRequestAt(uint256 i) external view returns (uint256) {
        return openRequests[i];
    }

    function selectors() external pure returns (bytes4[] memory sel) {
        sel = new bytes4[](13);
        sel[0] = this.deposit.selector;
        sel[1] = this.requestWithdrawal.selector;
        sel[2] = this.claimWithdrawal.selector;
        sel[3] = this.escapeWithdraw.selector;
        sel[4] = this.settleBatch.selector;
        sel[5] = this.settleBatch.selector; // settling twice as likely as other actions
        sel[6] = this.settleInvalidBatch.selector;
        sel[7] = this.replayLastBatch.selector;
        sel[8] = this.settleAsStranger.selector;
        sel[9] = this.heartbeat.selector;
        sel[10] = this.togglePause.selector;
        sel[11] = this.warp.selector;
        sel[12] = this.warpPastEscapePeriod.selector;
    }
}

contract SettlementInvariantTest is Test {
    Settlement internal s;
    SettlementHandler internal handler;
    MockERC20[2] internal tokens;

    function setUp() public {
        address admin = address(0xAD);
        address operator = address(0x0BE);
        address fee = address(0xFEE);
        s = new Settlement(admin, operator, fee, 1 days);
        tokens[0] = new MockERC20("Bitcoin", "BTC", 18);
        tokens[1] = new MockERC20("US Dollar", "USD", 6);
        handler = new SettlementHandler(s, tokens, admin, operator, fee);
    }

    // Read by forge to restrict the campaign to the handler's actions.
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function targetSelectors() public view returns (FuzzSelector[] memory targets) {
        targets = new FuzzSelector[](1);
        targets[0] = FuzzSelector({addr: address(handler), selectors: handler.selectors()});
    }

    /// Conservation: per token, internal balances plus reservations equal the custody balance,
    /// and reservations equal the open withdrawal requests (until escape pays them out).
    function invariant_conservationOfEachAsset() public view {
        for (uint256 t; t < 2; ++t) {
            address token = address(tokens[t]);
            uint256 internalTotal;
            uint256 reservedTotal;
            for (uint256 a; a < 5; ++a) {
                address actor = handler.actors(a);
                internalTotal += s.balanceOf(actor, token) + s.reservedOf(actor, token);
                reservedTotal += s.reservedOf(actor, token);
            }
            assertEq(internalTotal, tokens[t].balanceOf(address(s)), "custody == balances + reserved");
            if (handler.nEscapes() == 0) {
                uint256 requested;
                for (uint256 i; i < handler.openRequestCount(); ++i) {
                    (, , address wToken, uint256 amount) = s.withdrawals(handler.openRequestAt(i));
                    if (wToken == token) requested += amount;
                }
                assertEq(reservedTotal, requested, "reserved == open requests");
            }
        }
    }

    /// No double settlement: each market's head equals the model (advanced by exactly the batch
    /// length, hash chain recomputed independently), replays and bad batches were rejected.
    function invariant_noDoubleSettlementAndHashChain() public view {
        for (uint256 m; m < 2; ++m) {
            bytes32 market = handler.markets(m);
            assertEq(uint256(s.lastSettledSeq(market)), uint256(handler.ghostSeq(market)), "sequence head");
            assertEq(s.lastBatchHash(market), handler.ghostHash(market), "hash chain head");
        }
        assertFalse(handler.replayAccepted(), "replay accepted");
        assertFalse(handler.seqNotAdvancedByLength(), "sequence advanced by other than the batch length");
        assertFalse(handler.hashMismatch(), "batch hash differs from the documented formula");
        assertFalse(handler.badBatchAccepted(), "non-netting or overdrawing batch accepted");
    }

    /// Only the operator settles: strangers were always rejected, and the epoch counts exactly
    /// the operator's batches and heartbeats.
    function invariant_onlyOperatorSettles() public view {
        assertFalse(handler.unauthorizedSettle(), "non-operator settled");
        assertEq(
            uint256(s.settlementEpoch()), handler.ghostBatches() + handler.ghostHeartbeats(), "epoch == operator actions"
        );
    }

    /// Paused means no state change (escape withdrawals excepted), and nothing but escape
    /// withdrawals changes state once escape mode is open.
    function invariant_pausedMeansNoStateChange() public view {
        assertFalse(handler.pausedStateChanged(), "state changed while paused");
        assertFalse(handler.actedDuringEscape(), "state changed in escape mode");
    }

    /// Escape hatch: always available after the period (paused or not), never before, and pays
    /// exactly available + reserved.
    function invariant_escapeHatchAfterPeriod() public view {
        assertFalse(handler.escapeFailed(), "escape failed after the period");
        assertFalse(handler.escapeEarly(), "escape succeeded before the period");
        assertFalse(handler.escapeWrongAmount(), "escape paid a wrong amount");
        if (block.timestamp >= uint256(s.lastSettlementAt()) + s.escapePeriod()) {
            assertTrue(s.escapeOpen(), "escape open after the period");
        }
    }

    /// Withdrawals are only claimable after a later settlement.
    function invariant_withdrawalTiming() public view {
        assertFalse(handler.earlyClaim(), "claimed before a later settlement");
    }
}
