// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test, console} from "./utils/Test.sol";
import {MockERC20} from "./mocks/MockERC20.sol";
import {Settlement} from "../src/Settlement.sol";

/// Gas of one 1000-trade batch among 100 accounts (net deltas: one per account and token,
/// plus the fee account, i.e. 201 deltas). The deposits happen in setUp, a separate
/// transaction, so every balance slot is cold when the batch runs, as on chain.
///
/// Reproduce: forge test --match-contract SettlementGasTest -vv
contract SettlementGasTest is Test {
    uint256 internal constant ACCOUNTS = 100;
    uint256 internal constant TRADES = 1000;
    uint256 internal constant GAS_BUDGET_PER_TRADE = 4000;

    Settlement internal s;
    MockERC20 internal base;
    MockERC20 internal quote;
    address internal operator = address(0x0BE);
    address internal feeAccount = address(0xFEE);
    bytes32 internal constant MARKET = keccak256("BTC-USD");

    function _account(uint256 i) internal pure returns (address) {
        return address(uint160(0x10000 + i));
    }

    function setUp() public {
        s = new Settlement(address(0xAD), operator, feeAccount, 1 days);
        base = new MockERC20("Bitcoin", "BTC", 18);
        quote = new MockERC20("US Dollar", "USD", 6);
        for (uint256 i; i < ACCOUNTS; ++i) {
            address a = _account(i);
            base.mint(a, 1_000e18);
            quote.mint(a, 100_000_000e6);
            vm.startPrank(a);
            base.approve(address(s), type(uint256).max);
            quote.approve(address(s), type(uint256).max);
            s.deposit(address(base), 1_000e18);
            s.deposit(address(quote), 100_000_000e6);
            vm.stopPrank();
        }
        // Earlier batch so that the market's sequence and hash slots are non-zero, as in steady state.
        vm.prank(operator);
        s.settleBatch(MARKET, 1, 1, bytes32(0), bytes32(0), new Settlement.Delta[](0));
    }

    /// Deterministic pseudo-random trades, netted per (account, token) as the batcher does.
    function _batchDeltas() internal view returns (Settlement.Delta[] memory d) {
        int256[ACCOUNTS] memory baseNet;
        int256[ACCOUNTS] memory quoteNet;
        int256 fees;
        for (uint256 t; t < TRADES; ++t) {
            uint256 r = uint256(keccak256(abi.encode(t)));
            uint256 buyer = r % ACCOUNTS;
            uint256 seller = (buyer + 1 + (r >> 8) % (ACCOUNTS - 1)) % ACCOUNTS;
            int256 qty = int256(1e15 + (r >> 16) % 1e17); // 0.001 .. 0.101 BTC
            int256 price = int256(60_000e6 + (r >> 80) % 1_000e6); // USD per BTC (6 decimals)
            int256 notional = qty * price / 1e18;
            int256 fee = notional / 1000; // 0.1% per side
            baseNet[buyer] += qty;
            baseNet[seller] -= qty;
            quoteNet[buyer] -= notional + fee;
            quoteNet[seller] += notional - fee;
            fees += 2 * fee;
        }
        d = new Settlement.Delta[](2 * ACCOUNTS + 1);
        uint256 k;
        for (uint256 i; i < ACCOUNTS; ++i) {
            d[k++] = Settlement.Delta(_account(i), address(base), baseNet[i]);
            d[k++] = Settlement.Delta(_account(i), address(quote), quoteNet[i]);
        }
        d[k] = Settlement.Delta(feeAccount, address(quote), fees);
    }

    /// Intrinsic gas of a transaction with this calldata (EIP-2028), and the EIP-7623 floor.
    function _intrinsic(bytes memory data) internal pure returns (uint256 standard, uint256 floor) {
        uint256 zeros;
        for (uint256 i; i < data.length; ++i) {
            if (data[i] == 0) ++zeros;
        }
        uint256 nonZeros = data.length - zeros;
        standard = 21000 + 4 * zeros + 16 * nonZeros;
        floor = 21000 + 10 * (zeros + 4 * nonZeros);
    }

    function test_gas_1000TradesAmong100Accounts() public {
        Settlement.Delta[] memory d = _batchDeltas();
        bytes32 prev = s.lastBatchHash(MARKET);
        bytes32 root = keccak256("merkle root of trades 2..1001");
        bytes memory data = abi.encodeCall(Settlement.settleBatch, (MARKET, 2, 1001, prev, root, d));
        (uint256 intrinsic, uint256 floor) = _intrinsic(data);

        vm.prank(operator);
        uint256 g0 = gasleft();
        s.settleBatch(MARKET, 2, 1001, prev, root, d);
        uint256 execution = g0 - gasleft();

        uint256 total = intrinsic + execution;
        if (floor > total) total = floor;
        console.log("deltas", d.length);
        console.log("calldata bytes", data.length);
        console.log("execution gas (incl. call overhead)", execution);
        console.log("intrinsic gas (21000 + calldata)", intrinsic);
        console.log("total tx gas", total);
        console.log("gas per trade", total / TRADES);
        assertEq(uint256(s.lastSettledSeq(MARKET)), 1001, "settled");
        assertLe(total, GAS_BUDGET_PER_TRADE * TRADES, "gas budget: 4000 per trade at 1000 trades");
    }
}
