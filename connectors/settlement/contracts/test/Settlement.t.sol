// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test, console} from "./utils/Test.sol";
import {MockERC20, FeeOnTransferERC20} from "./mocks/MockERC20.sol";
import {Settlement} from "../src/Settlement.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

/// Shared fixture: a deployed Settlement, two tokens and two funded users.
abstract contract SettlementFixture is Test {
    Settlement internal s;
    MockERC20 internal base; // e.g. BTC, 18 decimals
    MockERC20 internal quote; // e.g. USD, 6 decimals

    address internal admin = address(0xAD);
    address internal operator = address(0x0BE);
    address internal feeAccount = address(0xFEE);
    address internal alice = address(0xA11CE);
    address internal bob = address(0xB0B);

    bytes32 internal constant BTC_USD = keccak256("BTC-USD");
    bytes32 internal constant ETH_USD = keccak256("ETH-USD");
    uint64 internal constant ESCAPE_PERIOD = 1 days;

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

    function setUp() public virtual {
        s = new Settlement(admin, operator, feeAccount, ESCAPE_PERIOD);
        base = new MockERC20("Bitcoin", "BTC", 18);
        quote = new MockERC20("US Dollar", "USD", 6);
        vm.label(address(s), "Settlement");
        vm.label(address(base), "BTC");
        vm.label(address(quote), "USD");
    }

    function _fund(address who, MockERC20 token, uint256 amount) internal {
        token.mint(who, amount);
        vm.startPrank(who);
        token.approve(address(s), amount);
        s.deposit(address(token), amount);
        vm.stopPrank();
    }

    function _d(address account, address token, int256 amount) internal pure returns (Settlement.Delta memory) {
        return Settlement.Delta({account: account, token: token, amount: amount});
    }

    /// The documented batch-hash formula, written out independently of the contract.
    function _batchHash(
        bytes32 prev,
        bytes32 market,
        uint64 first,
        uint64 last,
        bytes32 root,
        Settlement.Delta[] memory deltas
    ) internal pure returns (bytes32) {
        return keccak256(abi.encode(prev, market, first, last, root, keccak256(abi.encode(deltas))));
    }

    /// Settle the next batch of `market` (sequence and previous hash taken from the contract).
    function _settle(bytes32 market, uint64 count, Settlement.Delta[] memory deltas) internal returns (bytes32) {
        uint64 first = s.lastSettledSeq(market) + 1;
        bytes32 prev = s.lastBatchHash(market);
        vm.prank(operator);
        return s.settleBatch(market, first, first + count - 1, prev, keccak256(abi.encode(first)), deltas);
    }

    function _noDeltas() internal pure returns (Settlement.Delta[] memory) {
        return new Settlement.Delta[](0);
    }

    /// alice buys 2 BTC from bob at 50,000 USD; each side pays 0.1% fee in USD.
    function _tradeDeltas() internal view returns (Settlement.Delta[] memory d) {
        d = new Settlement.Delta[](5);
        d[0] = _d(alice, address(base), 2e18);
        d[1] = _d(alice, address(quote), -100_100e6);
        d[2] = _d(bob, address(base), -2e18);
        d[3] = _d(bob, address(quote), 99_900e6);
        d[4] = _d(feeAccount, address(quote), 200e6);
    }
}

contract SettlementUnitTest is SettlementFixture {
    // ------------------------------------------------------------ construction and config

    function test_constructor_setsRolesAndConfig() public view {
        assertTrue(s.hasRole(s.DEFAULT_ADMIN_ROLE(), admin), "admin role");
        assertTrue(s.hasRole(s.OPERATOR_ROLE(), operator), "operator role");
        assertFalse(s.hasRole(s.OPERATOR_ROLE(), admin), "admin is not operator");
        assertEq(s.feeAccount(), feeAccount, "fee account");
        assertEq(uint256(s.escapePeriod()), ESCAPE_PERIOD, "escape period");
        assertEq(uint256(s.lastSettlementAt()), block.timestamp, "clock starts at deployment");
        assertEq(uint256(s.settlementEpoch()), 0, "epoch");
        assertFalse(s.escapeOpen(), "escape closed");
        assertEq(s.OPERATOR_ROLE(), keccak256("OPERATOR_ROLE"), "role id");
    }

    function test_constructor_rejectsZeroAddresses() public {
        vm.expectRevert(Settlement.ZeroAddress.selector);
        new Settlement(address(0), operator, feeAccount, ESCAPE_PERIOD);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        new Settlement(admin, address(0), feeAccount, ESCAPE_PERIOD);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        new Settlement(admin, operator, address(0), ESCAPE_PERIOD);
    }

    function test_constructor_rejectsEscapePeriodOutOfBounds() public {
        vm.expectRevert(abi.encodeWithSelector(Settlement.InvalidEscapePeriod.selector, uint64(10 minutes - 1)));
        new Settlement(admin, operator, feeAccount, 10 minutes - 1);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InvalidEscapePeriod.selector, uint64(30 days + 1)));
        new Settlement(admin, operator, feeAccount, 30 days + 1);
    }

    function test_setFeeAccount() public {
        vm.expectEmit(true, true, false, true, address(s));
        emit FeeAccountSet(feeAccount, alice);
        vm.prank(admin);
        s.setFeeAccount(alice);
        assertEq(s.feeAccount(), alice, "fee account updated");

        vm.prank(admin);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        s.setFeeAccount(address(0));
    }

    function test_setEscapePeriod() public {
        vm.expectEmit(false, false, false, true, address(s));
        emit EscapePeriodSet(ESCAPE_PERIOD, 2 days);
        vm.prank(admin);
        s.setEscapePeriod(2 days);
        assertEq(uint256(s.escapePeriod()), 2 days, "period updated");

        vm.prank(admin);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InvalidEscapePeriod.selector, uint64(31 days)));
        s.setEscapePeriod(31 days);

        // A shorter period that would open escape mode right away is refused.
        vm.warp(block.timestamp + 1 hours);
        vm.prank(admin);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InvalidEscapePeriod.selector, uint64(1 hours)));
        s.setEscapePeriod(1 hours);
        vm.prank(admin);
        s.setEscapePeriod(1 hours + 1);
        assertFalse(s.escapeOpen(), "still closed");
    }

    // ------------------------------------------------------------ role checks

    function test_roles_onlyOperatorSettles() public {
        bytes32 role = s.OPERATOR_ROLE();
        address[3] memory notOperators = [alice, admin, feeAccount];
        for (uint256 i; i < notOperators.length; ++i) {
            vm.prank(notOperators[i]);
            vm.expectRevert(
                abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, notOperators[i], role)
            );
            s.settleBatch(BTC_USD, 1, 1, bytes32(0), bytes32(0), _noDeltas());
        }
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, alice, role));
        s.heartbeat();
        assertEq(uint256(s.lastSettledSeq(BTC_USD)), 0, "nothing settled");
    }

    function test_roles_onlyAdminConfigures() public {
        bytes32 adminRole = s.DEFAULT_ADMIN_ROLE();
        bytes memory err =
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, operator, adminRole);
        bytes32 operatorRole = s.OPERATOR_ROLE();
        vm.startPrank(operator);
        vm.expectRevert(err);
        s.pause();
        vm.expectRevert(err);
        s.unpause();
        vm.expectRevert(err);
        s.setFeeAccount(alice);
        vm.expectRevert(err);
        s.setEscapePeriod(2 days);
        vm.expectRevert(err);
        s.grantRole(operatorRole, alice);
        vm.stopPrank();
    }

    function test_roles_adminCanRotateOperator() public {
        bytes32 role = s.OPERATOR_ROLE();
        vm.startPrank(admin);
        s.grantRole(role, alice);
        s.revokeRole(role, operator);
        vm.stopPrank();

        vm.prank(alice);
        s.settleBatch(BTC_USD, 1, 3, bytes32(0), bytes32(0), _noDeltas());
        assertEq(uint256(s.lastSettledSeq(BTC_USD)), 3, "new operator settled");

        bytes32 prev = s.lastBatchHash(BTC_USD);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, operator, role));
        s.settleBatch(BTC_USD, 4, 4, prev, bytes32(0), _noDeltas());
    }

    // ------------------------------------------------------------ deposits

    function test_deposit_creditsAndEmits() public {
        quote.mint(alice, 1_000e6);
        vm.startPrank(alice);
        quote.approve(address(s), 1_000e6);
        vm.expectEmit(true, true, false, true, address(s));
        emit Deposited(alice, address(quote), 400e6);
        s.deposit(address(quote), 400e6);
        vm.stopPrank();
        assertEq(s.balanceOf(alice, address(quote)), 400e6, "internal balance");
        assertEq(quote.balanceOf(address(s)), 400e6, "custody");
        assertEq(quote.balanceOf(alice), 600e6, "wallet");
    }

    function test_deposit_revertsOnZero() public {
        vm.prank(alice);
        vm.expectRevert(Settlement.ZeroAmount.selector);
        s.deposit(address(quote), 0);
    }

    function test_deposit_revertsWithoutAllowance() public {
        quote.mint(alice, 10e6);
        vm.prank(alice);
        vm.expectRevert();
        s.deposit(address(quote), 10e6);
        assertEq(s.balanceOf(alice, address(quote)), 0, "nothing credited");
    }

    function test_deposit_feeOnTransferCreditsAmountReceived() public {
        FeeOnTransferERC20 fot = new FeeOnTransferERC20();
        fot.mint(alice, 1000);
        vm.startPrank(alice);
        fot.approve(address(s), 1000);
        s.deposit(address(fot), 1000);
        vm.stopPrank();
        assertEq(s.balanceOf(alice, address(fot)), 990, "credited net of transfer fee");
        assertEq(fot.balanceOf(address(s)), 990, "custody matches credit");
    }

    // ------------------------------------------------------------ settlement

    function test_settle_happyPath() public {
        _fund(alice, quote, 200_000e6);
        _fund(bob, base, 5e18);
        Settlement.Delta[] memory d = _tradeDeltas();
        bytes32 root = keccak256("trades 1..7");
        bytes32 expected = _batchHash(bytes32(0), BTC_USD, 1, 7, root, d);

        vm.expectEmit(true, true, false, true, address(s));
        emit BatchSettled(BTC_USD, 1, 7, root, expected, bytes32(0));
        vm.prank(operator);
        bytes32 h = s.settleBatch(BTC_USD, 1, 7, bytes32(0), root, d);

        assertEq(h, expected, "returned hash");
        assertEq(s.lastBatchHash(BTC_USD), expected, "stored hash");
        assertEq(uint256(s.lastSettledSeq(BTC_USD)), 7, "last seq");
        assertEq(uint256(s.settlementEpoch()), 1, "epoch");
        assertEq(s.balanceOf(alice, address(base)), 2e18, "alice base");
        assertEq(s.balanceOf(alice, address(quote)), 200_000e6 - 100_100e6, "alice quote");
        assertEq(s.balanceOf(bob, address(base)), 3e18, "bob base");
        assertEq(s.balanceOf(bob, address(quote)), 99_900e6, "bob quote");
        assertEq(s.balanceOf(feeAccount, address(quote)), 200e6, "fees");
        assertEq(quote.balanceOf(address(s)), 200_000e6, "custody unchanged");
    }

    function test_settle_chainsHashesPerMarket() public {
        bytes32 h1 = _settle(BTC_USD, 1000, _noDeltas());
        bytes32 e1 = s.lastBatchHash(ETH_USD);
        assertEq(e1, bytes32(0), "other market untouched");
        bytes32 h2 = _settle(BTC_USD, 10, _noDeltas());
        assertEq(h2, _batchHash(h1, BTC_USD, 1001, 1010, keccak256(abi.encode(uint64(1001))), _noDeltas()), "chain");
        _settle(ETH_USD, 5, _noDeltas());
        assertEq(uint256(s.lastSettledSeq(ETH_USD)), 5, "eth seq");
        assertEq(uint256(s.lastSettledSeq(BTC_USD)), 1010, "btc seq");
        assertEq(uint256(s.settlementEpoch()), 3, "epoch counts all markets");
    }

    /// Cross-language vector: the same value is asserted in tests/unit/contracts/test_contracts.py,
    /// computed there with eth_abi + keccak (the off-chain batcher's formula).
    function test_settle_batchHashMatchesOffChainVector() public pure {
        Settlement.Delta[] memory d = new Settlement.Delta[](3);
        d[0] = Settlement.Delta(address(0x1111111111111111111111111111111111111111), address(0xAAAA), 5);
        d[1] = Settlement.Delta(address(0x2222222222222222222222222222222222222222), address(0xAAAA), -7);
        d[2] = Settlement.Delta(address(0x3333333333333333333333333333333333333333), address(0xAAAA), 2);
        bytes32 h = keccak256(
            abi.encode(
                keccak256("prev"), keccak256("BTC-USD"), uint64(1001), uint64(2000), keccak256("root"),
                keccak256(abi.encode(d))
            )
        );
        assertEq(h, _batchHash(keccak256("prev"), keccak256("BTC-USD"), 1001, 2000, keccak256("root"), d), "formula");
        assertEq(h, OFFCHAIN_VECTOR, "matches the Python computation");
    }

    bytes32 internal constant OFFCHAIN_VECTOR = 0xebe687c9887bbbb1ef7a12bd49d607a045b823c8573d4f7997577b9d6f356e12;

    function test_settle_replayRevertsBatchAlreadySettled() public {
        _fund(alice, quote, 200_000e6);
        _fund(bob, base, 5e18);
        Settlement.Delta[] memory d = _tradeDeltas();
        vm.prank(operator);
        s.settleBatch(BTC_USD, 1, 7, bytes32(0), bytes32("root"), d);

        // Exact resubmission of the same transaction.
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.BatchAlreadySettled.selector, BTC_USD, uint64(1), uint64(7)));
        s.settleBatch(BTC_USD, 1, 7, bytes32(0), bytes32("root"), d);

        // Overlapping range, even with the right previous hash.
        bytes32 prev = s.lastBatchHash(BTC_USD);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.BatchAlreadySettled.selector, BTC_USD, uint64(7), uint64(7)));
        s.settleBatch(BTC_USD, 7, 9, prev, bytes32("root"), _noDeltas());

        assertEq(s.balanceOf(alice, address(base)), 2e18, "applied once");
    }

    function test_settle_revertsSequenceGap() public {
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.SequenceGap.selector, BTC_USD, uint64(1), uint64(2)));
        s.settleBatch(BTC_USD, 2, 5, bytes32(0), bytes32(0), _noDeltas());

        _settle(BTC_USD, 10, _noDeltas());
        bytes32 prev = s.lastBatchHash(BTC_USD);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.SequenceGap.selector, BTC_USD, uint64(11), uint64(12)));
        s.settleBatch(BTC_USD, 12, 20, prev, bytes32(0), _noDeltas());
    }

    function test_settle_revertsInvalidSeqRange() public {
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InvalidSeqRange.selector, uint64(1), uint64(0)));
        s.settleBatch(BTC_USD, 1, 0, bytes32(0), bytes32(0), _noDeltas());
    }

    function test_settle_revertsPrevHashMismatch() public {
        vm.prank(operator);
        vm.expectRevert(
            abi.encodeWithSelector(Settlement.PrevHashMismatch.selector, BTC_USD, bytes32(0), bytes32(uint256(1)))
        );
        s.settleBatch(BTC_USD, 1, 1, bytes32(uint256(1)), bytes32(0), _noDeltas());

        bytes32 h = _settle(BTC_USD, 1, _noDeltas());
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.PrevHashMismatch.selector, BTC_USD, h, bytes32(0)));
        s.settleBatch(BTC_USD, 2, 2, bytes32(0), bytes32(0), _noDeltas());
    }

    function test_settle_revertsDeltasDoNotNet() public {
        _fund(alice, quote, 1_000e6);
        Settlement.Delta[] memory d = new Settlement.Delta[](2);
        d[0] = _d(alice, address(quote), -100e6);
        d[1] = _d(bob, address(quote), 99e6);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.DeltasDoNotNet.selector, address(quote)));
        s.settleBatch(BTC_USD, 1, 1, bytes32(0), bytes32(0), d);

        // Nets in quote but not in base (a positive-only token).
        d = new Settlement.Delta[](3);
        d[0] = _d(alice, address(quote), -100e6);
        d[1] = _d(bob, address(quote), 100e6);
        d[2] = _d(bob, address(base), 1);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.DeltasDoNotNet.selector, address(base)));
        s.settleBatch(BTC_USD, 1, 1, bytes32(0), bytes32(0), d);
    }

    function test_settle_revertsInsufficientBalance() public {
        _fund(alice, quote, 100e6);
        Settlement.Delta[] memory d = new Settlement.Delta[](2);
        d[0] = _d(bob, address(quote), 100e6 + 1);
        d[1] = _d(alice, address(quote), -(100e6 + 1));
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientBalance.selector, alice, address(quote)));
        s.settleBatch(BTC_USD, 1, 1, bytes32(0), bytes32(0), d);
    }

    function test_settle_deltasApplyInOrder() public {
        // bob has nothing: a debit listed before his credit fails, after it succeeds.
        _fund(alice, quote, 100e6);
        Settlement.Delta[] memory d = new Settlement.Delta[](4);
        d[0] = _d(bob, address(quote), -50e6);
        d[1] = _d(alice, address(quote), -50e6);
        d[2] = _d(bob, address(quote), 50e6);
        d[3] = _d(feeAccount, address(quote), 50e6);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientBalance.selector, bob, address(quote)));
        s.settleBatch(BTC_USD, 1, 1, bytes32(0), bytes32(0), d);

        (d[0], d[2]) = (d[2], d[0]);
        _settle(BTC_USD, 1, d);
        assertEq(s.balanceOf(bob, address(quote)), 0, "bob net zero");
        assertEq(s.balanceOf(feeAccount, address(quote)), 50e6, "fee");
    }

    function test_settle_cannotSpendReservedFunds() public {
        _fund(alice, quote, 100e6);
        vm.prank(alice);
        s.requestWithdrawal(address(quote), 60e6);
        Settlement.Delta[] memory d = new Settlement.Delta[](2);
        d[0] = _d(alice, address(quote), -50e6);
        d[1] = _d(bob, address(quote), 50e6);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientBalance.selector, alice, address(quote)));
        s.settleBatch(BTC_USD, 1, 1, bytes32(0), bytes32(0), d);
    }

    function test_settle_revertsInvalidDelta() public {
        Settlement.Delta[] memory d = new Settlement.Delta[](2);
        d[0] = _d(alice, address(quote), 0);
        d[1] = _d(address(0), address(quote), 0);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InvalidDelta.selector, uint256(1)));
        s.settleBatch(BTC_USD, 1, 1, bytes32(0), bytes32(0), d);

        d[1] = _d(alice, address(0), 0);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InvalidDelta.selector, uint256(1)));
        s.settleBatch(BTC_USD, 1, 1, bytes32(0), bytes32(0), d);

        d[0] = _d(alice, address(quote), type(int256).min);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InvalidDelta.selector, uint256(0)));
        s.settleBatch(BTC_USD, 1, 1, bytes32(0), bytes32(0), d);
    }

    // ------------------------------------------------------------ two-step withdrawals

    function test_withdrawal_requestReservesAndEmits() public {
        _fund(alice, quote, 100e6);
        vm.expectEmit(true, true, true, true, address(s));
        emit WithdrawalRequested(1, alice, address(quote), 30e6, 0);
        vm.prank(alice);
        uint256 id = s.requestWithdrawal(address(quote), 30e6);
        assertEq(id, 1, "first id");
        assertEq(s.balanceOf(alice, address(quote)), 70e6, "available");
        assertEq(s.reservedOf(alice, address(quote)), 30e6, "reserved");
        (address account, uint64 epoch, address token, uint256 amount) = s.withdrawals(id);
        assertEq(account, alice, "account");
        assertEq(uint256(epoch), 0, "epoch");
        assertEq(token, address(quote), "token");
        assertEq(amount, 30e6, "amount");
    }

    function test_withdrawal_requestReverts() public {
        _fund(alice, quote, 100e6);
        vm.startPrank(alice);
        vm.expectRevert(Settlement.ZeroAmount.selector);
        s.requestWithdrawal(address(quote), 0);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientBalance.selector, alice, address(quote)));
        s.requestWithdrawal(address(quote), 100e6 + 1);
        vm.stopPrank();
    }

    function test_withdrawal_claimOnlyAfterNextSettlement() public {
        _fund(alice, quote, 100e6);
        vm.prank(alice);
        uint256 id = s.requestWithdrawal(address(quote), 30e6);

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.WithdrawalNotReady.selector, id, uint64(0), uint64(0)));
        s.claimWithdrawal(id);

        // Time alone does not help; a settlement of any market does.
        vm.warp(block.timestamp + 12 hours);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.WithdrawalNotReady.selector, id, uint64(0), uint64(0)));
        s.claimWithdrawal(id);

        _settle(ETH_USD, 1, _noDeltas());

        vm.expectEmit(true, true, true, true, address(s));
        emit WithdrawalClaimed(id, alice, address(quote), 30e6);
        vm.prank(alice);
        s.claimWithdrawal(id);
        assertEq(quote.balanceOf(alice), 30e6, "paid");
        assertEq(s.reservedOf(alice, address(quote)), 0, "reservation released");
        assertEq(s.balanceOf(alice, address(quote)), 70e6, "rest available");
        assertEq(quote.balanceOf(address(s)), 70e6, "custody");

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.UnknownWithdrawal.selector, id));
        s.claimWithdrawal(id);
    }

    function test_withdrawal_requestAfterSettlementWaitsForTheNextOne() public {
        _fund(alice, quote, 100e6);
        _settle(BTC_USD, 1, _noDeltas());
        vm.prank(alice);
        uint256 id = s.requestWithdrawal(address(quote), 10e6);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.WithdrawalNotReady.selector, id, uint64(1), uint64(1)));
        s.claimWithdrawal(id);
        _settle(BTC_USD, 1, _noDeltas());
        vm.prank(alice);
        s.claimWithdrawal(id);
        assertEq(quote.balanceOf(alice), 10e6, "paid");
    }

    function test_withdrawal_heartbeatAdvancesEpoch() public {
        _fund(alice, quote, 100e6);
        vm.prank(alice);
        uint256 id = s.requestWithdrawal(address(quote), 10e6);
        vm.expectEmit(false, false, false, true, address(s));
        emit Heartbeat(1);
        vm.prank(operator);
        s.heartbeat();
        vm.prank(alice);
        s.claimWithdrawal(id);
        assertEq(quote.balanceOf(alice), 10e6, "paid");
    }

    function test_withdrawal_claimChecksOwnerAndId() public {
        _fund(alice, quote, 100e6);
        vm.prank(alice);
        uint256 id = s.requestWithdrawal(address(quote), 10e6);
        _settle(BTC_USD, 1, _noDeltas());

        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(Settlement.NotWithdrawalOwner.selector, id, bob));
        s.claimWithdrawal(id);

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.UnknownWithdrawal.selector, uint256(99)));
        s.claimWithdrawal(99);
    }

    // ------------------------------------------------------------ pause

    function test_pause_blocksStateChanges() public {
        _fund(alice, quote, 100e6);
        _fund(bob, quote, 100e6);
        vm.prank(alice);
        uint256 id = s.requestWithdrawal(address(quote), 10e6);
        _settle(BTC_USD, 1, _noDeltas());
        quote.mint(alice, 50e6);
        vm.prank(alice);
        quote.approve(address(s), 50e6);

        vm.prank(admin);
        s.pause();
        assertTrue(s.paused(), "paused");

        bytes4 paused = Pausable.EnforcedPause.selector;
        vm.startPrank(alice);
        vm.expectRevert(paused);
        s.deposit(address(quote), 50e6);
        vm.expectRevert(paused);
        s.requestWithdrawal(address(quote), 1e6);
        vm.expectRevert(paused);
        s.claimWithdrawal(id);
        vm.stopPrank();

        Settlement.Delta[] memory d = new Settlement.Delta[](2);
        d[0] = _d(alice, address(quote), -1e6);
        d[1] = _d(bob, address(quote), 1e6);
        bytes32 prev = s.lastBatchHash(BTC_USD);
        vm.startPrank(operator);
        vm.expectRevert(paused);
        s.settleBatch(BTC_USD, 2, 2, prev, bytes32(0), d);
        vm.expectRevert(paused);
        s.heartbeat();
        vm.stopPrank();

        assertEq(s.balanceOf(alice, address(quote)), 90e6, "alice unchanged");
        assertEq(s.reservedOf(alice, address(quote)), 10e6, "reservation unchanged");
        assertEq(uint256(s.lastSettledSeq(BTC_USD)), 1, "seq unchanged");
        assertEq(uint256(s.settlementEpoch()), 1, "epoch unchanged");

        vm.prank(admin);
        s.unpause();
        vm.prank(alice);
        s.claimWithdrawal(id);
        _settle(BTC_USD, 1, d);
        assertEq(s.balanceOf(bob, address(quote)), 101e6, "settles after unpause");
    }

    // ------------------------------------------------------------ escape hatch

    function test_escape_notBeforePeriod() public {
        _fund(alice, quote, 100e6);
        uint256 opensAt = block.timestamp + ESCAPE_PERIOD;
        vm.warp(opensAt - 1);
        assertFalse(s.escapeOpen(), "closed one second before");
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.EscapeNotAvailable.selector, opensAt));
        s.escapeWithdraw(address(quote));
    }

    function test_escape_settlementRestartsClock() public {
        _fund(alice, quote, 100e6);
        vm.warp(block.timestamp + ESCAPE_PERIOD - 1);
        _settle(BTC_USD, 1, _noDeltas());
        vm.warp(block.timestamp + ESCAPE_PERIOD - 1);
        assertFalse(s.escapeOpen(), "clock restarted by the batch");
        vm.prank(operator);
        s.heartbeat();
        vm.warp(block.timestamp + ESCAPE_PERIOD - 1);
        assertFalse(s.escapeOpen(), "clock restarted by the heartbeat");
        vm.warp(block.timestamp + 1);
        assertTrue(s.escapeOpen(), "open after a full period");
    }

    function test_escape_paysAvailablePlusReservedAfterPeriod() public {
        _fund(alice, quote, 200_000e6);
        _fund(bob, base, 5e18);
        _settle(BTC_USD, 3, _tradeDeltas());
        vm.prank(alice);
        s.requestWithdrawal(address(quote), 40_000e6);

        vm.warp(block.timestamp + ESCAPE_PERIOD);
        assertTrue(s.escapeOpen(), "open");

        uint256 expected = 200_000e6 - 100_100e6;
        vm.expectEmit(true, true, false, true, address(s));
        emit EscapeWithdrawn(alice, address(quote), expected);
        vm.prank(alice);
        uint256 paid = s.escapeWithdraw(address(quote));
        assertEq(paid, expected, "return value");
        assertEq(quote.balanceOf(alice), expected, "wallet");
        assertEq(s.balanceOf(alice, address(quote)), 0, "available cleared");
        assertEq(s.reservedOf(alice, address(quote)), 0, "reserved cleared");

        vm.prank(alice);
        s.escapeWithdraw(address(base));
        assertEq(base.balanceOf(alice), 2e18, "settled base");

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Settlement.NothingToWithdraw.selector, alice, address(quote)));
        s.escapeWithdraw(address(quote));

        // Everyone else can still leave; custody drains to exactly zero.
        vm.prank(bob);
        s.escapeWithdraw(address(base));
        vm.prank(bob);
        s.escapeWithdraw(address(quote));
        vm.prank(feeAccount);
        s.escapeWithdraw(address(quote));
        assertEq(quote.balanceOf(address(s)), 0, "quote drained");
        assertEq(base.balanceOf(address(s)), 0, "base drained");
    }

    function test_escape_worksWhilePaused() public {
        _fund(alice, quote, 100e6);
        vm.prank(admin);
        s.pause();
        vm.warp(block.timestamp + ESCAPE_PERIOD + 5 days);
        vm.prank(alice);
        s.escapeWithdraw(address(quote));
        assertEq(quote.balanceOf(alice), 100e6, "paid while paused");
    }

    function test_escape_modeStopsEverythingElse() public {
        _fund(alice, quote, 100e6);
        vm.prank(alice);
        uint256 id = s.requestWithdrawal(address(quote), 10e6);
        _settle(BTC_USD, 1, _noDeltas());
        quote.mint(alice, 5e6);
        vm.prank(alice);
        quote.approve(address(s), 5e6);
        bytes32 prev = s.lastBatchHash(BTC_USD);

        vm.warp(block.timestamp + ESCAPE_PERIOD);
        bytes4 esc = Settlement.EscapeModeActive.selector;

        vm.startPrank(operator);
        vm.expectRevert(esc);
        s.settleBatch(BTC_USD, 2, 2, prev, bytes32(0), _noDeltas());
        vm.expectRevert(esc);
        s.heartbeat();
        vm.stopPrank();

        vm.startPrank(alice);
        vm.expectRevert(esc);
        s.deposit(address(quote), 5e6);
        vm.expectRevert(esc);
        s.requestWithdrawal(address(quote), 1e6);
        vm.expectRevert(esc);
        s.claimWithdrawal(id);
        vm.stopPrank();

        // The admin can no longer move the deadline: escape mode is permanent.
        vm.prank(admin);
        vm.expectRevert(esc);
        s.setEscapePeriod(30 days);
        vm.warp(block.timestamp + 365 days);
        assertTrue(s.escapeOpen(), "still open");

        vm.prank(alice);
        assertEq(s.escapeWithdraw(address(quote)), 100e6, "pending request included exactly once");
    }

    // ------------------------------------------------------------ fuzz

    /// Any transfer of at most the payer's balance settles and conserves custody.
    function testFuzz_settle_transferConserves(uint256 deposit, uint256 amount, uint256 fee) public {
        deposit = bound(deposit, 1, 1e30);
        amount = bound(amount, 0, deposit);
        fee = bound(fee, 0, amount);
        _fund(alice, quote, deposit);
        Settlement.Delta[] memory d = new Settlement.Delta[](3);
        d[0] = _d(alice, address(quote), -int256(amount));
        d[1] = _d(bob, address(quote), int256(amount - fee));
        d[2] = _d(feeAccount, address(quote), int256(fee));
        _settle(BTC_USD, 1, d);
        uint256 total = s.balanceOf(alice, address(quote)) + s.balanceOf(bob, address(quote))
            + s.balanceOf(feeAccount, address(quote));
        assertEq(total, quote.balanceOf(address(s)), "conservation");
        assertEq(s.balanceOf(alice, address(quote)), deposit - amount, "payer");
    }
}
